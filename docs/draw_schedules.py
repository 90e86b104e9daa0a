"""Draw the rounds of the circle, team and brick schedules (n = 8) into docs/_static/schedules.png.

Run from the repository root: ``python docs/draw_schedules.py``.  Each panel has one column per round
(round 0, acting first, on the left) and one row per coordinate; a vertical bar joins the two
coordinates of each pair (the pairs of a round side by side).  Brick shows its Stiefel band for
m = 3 in red.
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import cupyortho as co  # noqa: E402


def draw(ax, sched, title, highlight=None):
    n = sched.n
    for r, rd in enumerate(sched.rounds):
        P = rd.i.size
        for k, (i, j) in enumerate(zip(rd.i.tolist(), rd.j.tolist())):
            dark = highlight is not None and (r, min(i, j)) in highlight
            x = r - 0.3 + 0.6 * k / max(1, P - 1)  # side by side, so long pairs stay readable
            ax.plot([x, x], [i, j], "-o", color="C3" if dark else "C0", lw=2.2, ms=4, alpha=0.9)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-0.6, sched.num_rounds - 0.4)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xticks(range(sched.num_rounds))
    ax.set_yticks(range(n))
    ax.set_xlabel("round (round 0 acts first)")
    ax.grid(alpha=0.2)


def main(n=8, out=pathlib.Path(__file__).parent / "_static" / "schedules.png"):
    slots = {(r, int(i)) for r, rd in enumerate(co.brick_schedule(n).rounds) for i in rd.i}
    lo, hi = -2 * ((3 - 1) // 2), 2 * (3 // 2)  # the St(n, 3) band: lo <= round - i <= hi
    kept = {(r, i) for (r, i) in slots if lo <= r - i <= hi}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    draw(axes[0], co.circle_schedule(n), f"circle, n = {n}: {n - 1} rounds")
    draw(axes[1], co.team_schedule(n, 2), f"team (t = 2), n = {n}: {n - 1} rounds")
    draw(axes[2], co.brick_schedule(n), f"brick, n = {n}: {n} rounds (red: St(n, 3) band)", kept)
    axes[0].set_ylabel("coordinate")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
