"""Draw each schedule's rounds from the schedule data at build time (``docs/_generated/``).

Pair tables (one rotation per plane: circle and team): for every pair ``(i, j)``, ``i < j``, the cell ``(i, j)`` of the picture holds the round that
rotates that plane (the lower triangle mirrors it), so a row shows the round in which a
coordinate meets each other coordinate: every number appears once per row (a round is a perfect
matching) and the numbers cover ``0 .. R-1``.  The figures are drawn from
:func:`cupyortho.circle_schedule` and :func:`cupyortho.team_schedule` themselves, so they show what
the code does.  The round-by-round picture of every schedule (brick included) comes from
``docs/draw_schedules.py``, run here into ``docs/_generated/schedules_rounds.png``.
"""

from __future__ import annotations

import os

FIGURES = [
    # file name, title, schedule factory arguments
    ("schedule_circle_8.png", "circle, n = 8", ("circle", 8, None)),
    ("schedule_team_8_t2.png", "team, n = 8, t = 2", ("team", 8, 2)),
    ("schedule_team_16_t4.png", "team, n = 16, t = 4", ("team", 16, 4)),
    ("schedule_circle_7.png", "circle, n = 7 (odd: a bye per round)", ("circle", 7, None)),
]


def round_table(sched):
    """(n, n) integer table: round of pair (i, j) in both triangles, -1 on the diagonal."""
    import numpy as np

    n = sched.n
    table = -np.ones((n, n), dtype=int)
    for r, rnd in enumerate(sched.rounds):
        table[rnd.i, rnd.j] = r
        table[rnd.j, rnd.i] = r
    return table


def draw(path, title, kind, n, t):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import cupyortho

    sched = cupyortho.circle_schedule(n) if kind == "circle" else cupyortho.team_schedule(n, t)
    table = round_table(sched)
    R = sched.num_rounds
    fig, ax = plt.subplots(figsize=(0.42 * n + 1.6, 0.42 * n + 0.8), dpi=110)
    shown = np.ma.masked_less(table, 0)
    ax.imshow(shown, cmap="viridis", vmin=0, vmax=max(R - 1, 1))
    for i in range(n):
        for j in range(n):
            if table[i, j] >= 0:
                ax.text(j, i, str(table[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if table[i, j] < 0.6 * R else "black")
    if kind == "team":
        for b in range(t, n, t):
            ax.axhline(b - 0.5, color="red", lw=0.8)
            ax.axvline(b - 0.5, color="red", lw=0.8)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.tick_params(labelsize=7)
    ax.set_xlabel("coordinate j")
    ax.set_ylabel("coordinate i")
    ax.set_title(f"{title}: {R} rounds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def generate(app):
    out = os.path.join(app.srcdir, "_generated")
    os.makedirs(out, exist_ok=True)
    for name, title, (kind, n, t) in FIGURES:
        draw(os.path.join(out, name), title, kind, n, t)
    # The round-by-round picture of docs/draw_schedules.py (the schedules' own figure script),
    # redrawn here so the site never shows a stale copy.
    script = os.path.join(app.srcdir, "draw_schedules.py")
    if os.path.exists(script):
        import importlib.util
        from pathlib import Path

        spec = importlib.util.spec_from_file_location("_draw_schedules", script)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.main(out=Path(out) / "schedules_rounds.png")


def setup(app):
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "version": "1"}
