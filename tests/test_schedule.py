"""Schedules are 1-factorizations of K_n: every pair once, rounds disjoint, the right number of rounds."""

import pickle

import numpy as np
import pytest

import cupyortho as co
from cupyortho.errors import ScheduleError, SizeError

SPOT = [96, 127, 128, 129, 255, 256, 257, 513]


def check_factorization(s, n):
    assert s.n == n
    a = co.num_angles(n) if s.m is None else co.num_angles(n, s.m)
    # every pair exactly once, each with its public triu index
    assert s.num_angles == a
    assert np.array_equal(np.sort(s.angle_index), np.arange(a))
    assert np.all(s.pair_i < s.pair_j) and np.all(s.pair_j < n)
    iu, ju = np.triu_indices(n, 1)
    assert np.array_equal(iu[s.angle_index], s.pair_i)
    assert np.array_equal(ju[s.angle_index], s.pair_j)
    # rounds are disjoint sets of pairs
    for rd in s.rounds:
        assert rd.i.size > 0
        coords = np.concatenate([rd.i, rd.j])
        assert np.unique(coords).size == coords.size
    assert s.round_offsets[0] == 0 and s.round_offsets[-1] == a
    assert np.all(np.diff(s.round_offsets) > 0)
    assert s.max_round_size <= n // 2


@pytest.mark.parametrize("n", list(range(2, 71)) + SPOT)
def test_circle_is_a_one_factorization(n):
    s = co.circle_schedule(n)
    check_factorization(s, n)
    assert s.num_rounds == (n - 1 if n % 2 == 0 else n)
    if n % 2 == 0:
        assert all(rd.i.size == n // 2 for rd in s.rounds)


@pytest.mark.parametrize("n", list(range(2, 71)) + SPOT)
def test_team_is_a_one_factorization(n):
    s = co.team_schedule(n)
    check_factorization(s, n)
    assert s.num_rounds <= s.padded_n - 1
    if s.padded_n == n:  # no dummy coordinates: a perfect 1-factorization
        assert s.num_rounds == n - 1
        assert all(rd.i.size == n // 2 for rd in s.rounds)


@pytest.mark.parametrize("t", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("n", [2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 64])
def test_team_sizes(n, t):
    s = co.team_schedule(n, t)
    check_factorization(s, n)
    assert s.team_size == t and s.padded_n % (2 * t) == 0
    if s.padded_n == n:
        assert s.num_rounds == n - 1


def test_team_round_structure():
    """A team round acts on disjoint 2t-coordinate blocks: each of its t rounds pairs team a with team b."""
    t, n = 4, 16
    s = co.team_schedule(n, t)
    rounds = s.rounds
    for rd in rounds[: t - 1]:  # intra-team phase
        assert np.all(rd.i // t == rd.j // t)
    for k in range(n // t - 1):
        block = rounds[t - 1 + k * t : t - 1 + (k + 1) * t]
        meetings = {(int(a), int(b)) for rd in block for a, b in zip(rd.i // t, rd.j // t)}
        teams = [x for m in meetings for x in m]
        assert len(meetings) == n // t // 2 and len(set(teams)) == n // t


@pytest.mark.parametrize("kind", ["circle", "team"])
@pytest.mark.parametrize("n,m", [(5, 1), (5, 2), (8, 3), (9, 8), (33, 4)])
def test_restriction_is_the_prefix(kind, n, m):
    s = co.get_schedule(kind, n, m)
    check_factorization(s, n)
    assert s.m == m
    assert np.all(s.pair_i < m)
    assert np.array_equal(np.sort(s.angle_index), np.arange(co.num_angles(n, m)))


def test_schedules_are_cached_immutable_and_picklable():
    s = co.circle_schedule(10)
    assert s is co.circle_schedule(10)
    assert co.team_schedule(10, 2) is co.team_schedule(10, 2)
    with pytest.raises(AttributeError):
        s.n = 3
    with pytest.raises(ValueError):
        s.pair_i[0] = 5
    assert pickle.loads(pickle.dumps(s)) is s
    assert hash(s) == hash(co.circle_schedule(10)) and s != co.team_schedule(10)
    assert "circle" in repr(s)


def test_round_order_permutation():
    s = co.team_schedule(9)
    theta = np.arange(co.num_angles(9), dtype=float)
    r = s.to_round_order(theta)
    assert np.array_equal(s.from_round_order(r), theta)
    assert np.array_equal(s.round_of_angle[s.angle_index], np.repeat(np.arange(s.num_rounds), np.diff(s.round_offsets)))


def test_num_angles():
    assert co.num_angles(2) == 1 and co.num_angles(5) == 10
    assert co.num_angles(5, 5) == co.num_angles(5, 4) == 10
    assert co.num_angles(5, 1) == 4 and co.num_angles(6, 2) == 9
    iu, _ = np.triu_indices(7, 1)
    for m in range(1, 8):
        assert co.num_angles(7, m) == np.count_nonzero(iu < m)


@pytest.mark.parametrize(
    "call, exc, text",
    [
        (lambda: co.circle_schedule(1), SizeError, "n must be an integer >= 2, got 1"),
        (lambda: co.circle_schedule(4.0), SizeError, "float"),
        (lambda: co.circle_schedule(True), SizeError, "bool"),
        (lambda: co.team_schedule(8, 3), SizeError, "power of two, got 3"),
        (lambda: co.team_schedule(8, 0), SizeError, "team_size must be an integer >= 1, got 0"),
        (lambda: co.get_schedule("spiral", 4), ScheduleError, "'spiral'"),
        (lambda: co.get_schedule(3, 4), ScheduleError, "int"),
        (lambda: co.get_schedule(co.circle_schedule(5), 4), ScheduleError, "n = 5"),
        (lambda: co.num_angles(4, 5), SizeError, "m = 5"),
        (lambda: co.num_angles(4, 0), SizeError, "m must be an integer >= 1, got 0"),
    ],
)
def test_schedule_errors(call, exc, text):
    with pytest.raises(exc, match=None) as info:
        call()
    assert text in str(info.value)


# --------------------------------------------------------------------------- sizes, restrictions, pair_index

def _full_then_restrict(kind, n, m, t):
    from cupyortho import schedule as S

    full = S._rebuild(kind, n, None, t)
    pi, pj, off = S._flatten_rounds(((r.i, r.j) for r in full.rounds), n, m, True)
    return S.Schedule(kind, n, m, t, full.padded_n, pi, pj, off)


@pytest.mark.parametrize("n", [3, 4, 9, 16, 21, 34])
def test_restricted_schedules_equal_the_restricted_full_schedule(n):
    from cupyortho import schedule as S

    for m in range(1, n - 1):
        for kind, t in [("circle", None), ("team", 1), ("team", 2), ("team", 4), ("team", 8)]:
            a, b = S._rebuild(kind, n, m, t), _full_then_restrict(kind, n, m, t)
            assert np.array_equal(a.round_offsets, b.round_offsets), (kind, n, m, t)
            assert np.array_equal(a.pair_i, b.pair_i) and np.array_equal(a.pair_j, b.pair_j)
            assert np.array_equal(a.angle_index, b.angle_index)
            check_factorization(a, n)


def test_frames_never_build_the_full_schedule(monkeypatch, rng):
    from cupyortho import schedule as S

    def refuse(*args):
        raise AssertionError("the full schedule was built")

    monkeypatch.setattr(S, "_team_rounds", refuse)
    n = 10**4
    for kind in (None, "circle", "brick"):
        s = co.get_schedule(kind, n, 1)
        assert s.num_angles == n - 1 and s.m == 1
        q = co.frame(rng.normal(size=n - 1), n, 1, schedule=kind)
        assert q.shape == (n, 1) and abs(float(q[:, 0] @ q[:, 0]) - 1) < 1e-12


@pytest.mark.parametrize(
    "call, text",
    [
        (lambda: co.circle_schedule(10**6), "MAX_SCHEDULE_PAIRS"),
        (lambda: co.brick_schedule(2**17), "MAX_SCHEDULE_PAIRS"),
        (lambda: co.get_schedule("circle", 10**12, 2), "MAX_SCHEDULE_PAIRS"),
        (lambda: co.team_schedule(8, 2**40), "team_size must be a power of two <= 64"),
        (lambda: co.team_schedule(1000, 2048), "<= 1024"),
        (lambda: co.Schedule.from_rounds(3, [[(0, 1)]] * 10).truncate(0), "k must be an integer >= 1"),
    ],
)
def test_absurd_sizes_are_refused_before_allocating(call, text):
    with pytest.raises(SizeError) as info:
        call()
    assert text in str(info.value)


def test_pair_index_checks_its_arguments():
    assert co.pair_index(0, 1, 4) == 0 and co.pair_index(2, 3, 4) == 5
    np.testing.assert_array_equal(co.pair_index([0, 1], [3, 2], 4), [2, 3])
    for args, text in [((1, 1, 4), "0 <= i < j < n"), ((2, 1, 4), "i = 2, j = 1"), ((0, 4, 4), "j = 4"),
                       ((-1, 2, 4), "i = -1"), ((0.5, 1, 4), "integer"), ((0, 1, 1), "n must be")]:
        with pytest.raises(SizeError) as info:
            co.pair_index(*args)
        assert text in str(info.value)


def test_block_paths_take_plain_team_schedules_only():
    from cupyortho import _strategy

    n = 4096
    assert _strategy.team_blocks_pay(co.team_schedule(64))
    assert _strategy.team_blocks_pay(co.get_schedule("team", n, n // 4))
    assert not _strategy.team_blocks_pay(co.get_schedule("team", n, 8))  # narrow frame: sweeps
    for s in (co.team_schedule(64).truncate(3), co.brick_schedule(8), co.circle_schedule(8),
              co.Schedule.from_rounds(4, [[(0, 1)]])):
        assert not _strategy.team_blocks_pay(s)
        assert _strategy.cupy_impl("matrix", s) == "rounds" and _strategy.cpu_impl("matrix", s) != "blocked"


def test_cupy_backend_takes_the_narrow_frame_rule_from_strategy():
    """The CuPy backend's block-vs-rounds choice is _strategy's (team_blocks_pay, the CPU's narrow-frame
    rule), not a copy: a narrow team frame (8m < n) sweeps, a wide one and the full schedule use blocks."""
    from cupyortho import _strategy
    from cupyortho.backends.cupy import so

    n = 4096
    narrow, wide = co.get_schedule("team", n, 8), co.get_schedule("team", n, n // 4)
    for op in ("matrix", "matrix_vjp"):
        assert so._use_blocked(op, narrow, None) is False and _strategy.cpu_impl(op, narrow) != "blocked"
        assert so._use_blocked(op, wide, None) is True and so._use_blocked(op, co.team_schedule(64), None) is True
        assert so._use_blocked(op, narrow, "blocked") is True  # an explicit path still forces blocks
        assert so._use_blocked(op, wide, "rounds") is False
