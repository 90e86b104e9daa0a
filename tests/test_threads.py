"""cupyortho's one thread setting (cupyortho/_threads.py, docs/threads.md).

The settings are observed *inside* cupyortho's calls: a spy wrapped around the CPU backend's
``matrix`` (what the public layer calls after validation) records what threadpoolctl and numba
report at that moment.  Every test leaves the process as it found it (checked by a fixture).
"""

import subprocess
import sys
import threading

import numpy as np
import pytest

import cupyortho as co
from cupyortho import _threads
from cupyortho.backends import cpu
from cupyortho.errors import SizeError

threadpoolctl = pytest.importorskip("threadpoolctl")
numba = pytest.importorskip("numba")
pytest.importorskip("scipy.linalg")  # loaded up front: it brings its own OpenBLAS, which the checks include


def _blas():
    """BLAS thread counts as threadpoolctl reports them (a fresh look, not cupyortho's cache)."""
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture(autouse=True)
def untouched():
    """Each test starts and ends with no cupyortho setting and the process's own BLAS/numba counts."""
    blas, nb = _blas(), numba.get_num_threads()
    assert _threads._setting is None
    yield
    assert _threads._setting is None, "a test left a cupyortho thread setting behind"
    assert _blas() == blas, "BLAS thread counts were not restored"
    assert numba.get_num_threads() == nb, "numba's thread count was not restored"


@pytest.fixture
def spy(monkeypatch):
    """Records (BLAS counts, numba count under the engine's context, get_num_threads()) inside each
    call of the CPU backend's matrix."""
    seen = []
    real = cpu.matrix

    def matrix(*args, **kwargs):
        with _threads.numba_threads():  # what the engine enters around each of its calls
            seen.append((_blas(), numba.get_num_threads(), co.get_num_threads()))
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu, "matrix", matrix)
    return seen


THETA = np.linspace(-1.0, 1.0, co.num_angles(6))


def test_set_num_threads_reaches_every_pool_inside_the_call(spy):
    ref = co.matrix(THETA)
    try:
        co.set_num_threads(1)
        assert co.get_num_threads() == 1
        assert numba.get_num_threads() == 1  # numba is imported: set in this thread now too
        u = co.matrix(THETA)
    finally:
        co.set_num_threads(None)
    blas, nb, reported = spy[-1]
    assert blas and all(b == 1 for b in blas)
    assert nb == 1 and reported == 1
    np.testing.assert_allclose(u, ref, rtol=0, atol=1e-15)


def test_context_sets_and_restores_including_on_error(spy):
    before = _blas()
    with co.threads(1) as k:
        assert k == 1
        co.matrix(THETA)
        with co.threads(2):  # contexts nest
            co.matrix(THETA)
            assert co.get_num_threads() == 2
        assert co.get_num_threads() == 1 and _blas() == [1] * len(before)
    assert _blas() == before
    assert [s[0] for s in spy[-2:]] == [[1] * len(before), [2] * len(before)]
    with pytest.raises(RuntimeError, match="boom"):
        with co.threads(1):
            raise RuntimeError("boom")
    assert _blas() == before and co.get_num_threads() == _threads.available_cpus()


def test_numba_is_capped_at_its_launched_threads():
    cap = numba.config.NUMBA_NUM_THREADS
    with co.threads(cap + 1):
        assert co.get_num_threads() == cap + 1
        with _threads.numba_threads() as k:
            assert k == cap and numba.get_num_threads() == cap


def test_numba_setting_is_applied_per_calling_thread():
    """numba's count is thread-local: the engine's per-call context applies the setting in any thread."""
    out = {}

    def worker():
        with _threads.numba_threads():
            out["inside"] = numba.get_num_threads()
        out["after"] = numba.get_num_threads()

    with co.threads(1):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert out["inside"] == 1
    assert out["after"] == numba.config.NUMBA_NUM_THREADS  # a new thread's default, given back


def test_nothing_set_touches_nothing(spy):
    blas = _blas()
    co.matrix(THETA)
    assert spy[-1][0] == blas and spy[-1][1] == numba.get_num_threads()
    with _threads.numba_threads() as k:
        assert k is None


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2", None.__class__])
def test_bad_counts_raise_naming_the_argument(bad):
    with pytest.raises(SizeError, match="n must be an integer >= 1"):
        co.set_num_threads(bad)
    with pytest.raises(SizeError, match="n must be an integer"):
        with co.threads(bad):
            pass


def test_numpy_integer_count_accepted():
    with co.threads(np.int64(1)) as k:
        assert k == 1 and type(k) is int


def test_budgets_from_several_threads_share_one_blas_override():
    """Budgets entered in several threads share one BLAS override, given back when the last leaves.
    (OpenBLAS 0.3.31 takes a new thread count from the main thread only, so the main thread enters
    first here, as a torch training loop does.)"""
    before = _blas()
    inside = []
    gate = threading.Barrier(2)

    def worker():
        with _threads.budget(2):
            gate.wait()
            inside.append((_blas(), co.get_num_threads()))
        assert co.get_num_threads() == _threads.available_cpus()

    with _threads.budget(1):
        ts = [threading.Thread(target=worker) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert co.get_num_threads() == 1  # this thread's budget, not the workers'
        assert _blas() == [_threads._budget_blas(1)] * len(before)  # workers left, main still inside
    assert [k for _, k in inside] == [2, 2]
    assert all(b == [_threads._budget_blas(1)] * len(before) for b, _ in inside)
    assert _blas() == before and _threads._scope["depth"] == 0


def test_import_loads_no_thread_library():
    code = ("import sys, cupyortho; "
            "bad = [m for m in ('threadpoolctl', 'numba') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- torch's budget

def test_torch_ops_follow_torchs_budget(spy):
    torch = pytest.importorskip("torch")
    import cupyortho.torch as ct

    before = _blas()
    old = torch.get_num_threads()
    theta = torch.tensor(THETA)
    try:
        for budget in (1, 2):
            torch.set_num_threads(budget)
            with co.threads(2):  # the NumPy setting does not govern torch's calls
                u = ct.matrix(theta)
            blas, nb, reported = spy[-1]
            assert reported == budget
            assert nb == min(budget, numba.config.NUMBA_NUM_THREADS)
            assert blas == [_threads._budget_blas(budget)] * len(before)
            np.testing.assert_allclose(u.numpy(), co.matrix(THETA), rtol=0, atol=1e-15)
    finally:
        torch.set_num_threads(old)
    assert _blas() == before


def test_torch_budget_restores_after_a_failing_op(monkeypatch):
    torch = pytest.importorskip("torch")
    import cupyortho.torch as ct

    before = _blas()

    def fail(*args, **kwargs):
        raise FloatingPointError("inside the op")

    monkeypatch.setattr(cpu, "matrix", fail)
    with pytest.raises(FloatingPointError):
        ct.matrix(torch.tensor(THETA))
    assert _blas() == before and _threads._scope["depth"] == 0


def test_blocked_worker_threads_follow_the_setting():
    from cupyortho.backends import blocked

    a = np.zeros((2, 8))
    big = 1 << 15  # angles per block: enough work to split

    def parts():
        out = blocked._split_map(lambda x: x.shape[-1], 8, big, (a, -1))
        return len(out) if isinstance(out, list) else 1

    with co.threads(1):
        assert parts() == 1
    with co.threads(2):
        assert parts() == min(2, blocked.THREADS)
    with _threads.budget(1):
        assert parts() == 1


def test_undo_gives_numba_back_the_users_count():
    cap, orig = numba.config.NUMBA_NUM_THREADS, numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with co.threads(cap):
            assert numba.get_num_threads() == cap
        assert numba.get_num_threads() == 1  # the user's own numba setting survives
    finally:
        numba.set_num_threads(orig)


def test_apply_to_numba_sets_the_calling_thread():
    orig = numba.get_num_threads()
    assert _threads.apply_to_numba() is None  # nothing set: numba keeps its own count
    assert numba.get_num_threads() == orig
    try:
        with co.threads(1):
            numba.set_num_threads(orig)  # as if something reset it since
            assert _threads.apply_to_numba() == 1 and numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(orig)


def test_the_compiled_engine_runs_on_the_setting(monkeypatch):
    """A real engine call (routed there by _strategy.FORCE) sees the setting and torch's budget in
    numba's count, and gives the thread its count back."""
    from cupyortho import _strategy
    from cupyortho.backends import engine

    seen = []
    real = engine._run

    def run(*args):
        seen.append(numba.get_num_threads())
        return real(*args)

    monkeypatch.setattr(_strategy, "FORCE", "engine")
    monkeypatch.setattr(engine, "_run", run)
    x = np.ones((6, 3))
    ref = co.apply(THETA, x)
    default = numba.get_num_threads()
    assert seen[-1] == default
    with co.threads(1):
        np.testing.assert_array_equal(co.apply(THETA, x), ref)  # the engine is bitwise thread-count independent
    assert seen[-1] == 1 and numba.get_num_threads() == default
    torch = pytest.importorskip("torch")
    import cupyortho.torch as ct

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ct.apply(torch.tensor(THETA), torch.tensor(x))
    finally:
        torch.set_num_threads(old)
    assert seen[-1] == 1 and numba.get_num_threads() == default


def test_torch_keeps_its_own_thread_count_across_engine_calls():
    """Regression: numba's OpenMP pool shares torch's libgomp; the first engine call under torch's
    budget reset torch.get_num_threads() from 1 to 2.  A fresh process, so numba's pool starts
    inside the call as in a training script."""
    pytest.importorskip("torch")
    code = ("import torch; torch.set_num_threads(1); import cupyortho as co, cupyortho.torch as ct; "
            "th = torch.zeros(co.num_angles(64)); ct.apply(th, torch.randn(64, 3)); ct.matrix(th); "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "1"


def test_serial_blas_sets_one_thread_and_restores_after_the_last_context():
    """The blocked slab path's context: BLAS single-threaded inside (nested and from two threads
    sharing one override), the earlier counts back after the last one leaves, also on error; with
    one worker nothing is touched."""
    before = _blas()
    with _threads.serial_blas(1) as w:
        assert w == 1 and _blas() == before
    if max(before) < 2:
        pytest.skip("BLAS already single-threaded: nothing to observe")
    with _threads.serial_blas(2) as w:
        assert w == 2 and all(b == 1 for b in _blas())
        with _threads.serial_blas(2):
            assert all(b == 1 for b in _blas())
        assert all(b == 1 for b in _blas())  # the inner exit keeps the outer's override
        inside = []
        th = threading.Thread(target=lambda: inside.append(_enter_and_report()))
        th.start()
        th.join()
        assert inside and all(b == 1 for b in _blas())
    assert _blas() == before
    with pytest.raises(RuntimeError):
        with _threads.serial_blas(2):
            raise RuntimeError("inside")
    assert _blas() == before and _threads._serial["depth"] == 0
    # from another thread with no override in force: OpenBLAS may ignore the request (0.3.31 does);
    # the context then says so by yielding one worker
    alone = []
    th = threading.Thread(target=lambda: alone.append(_enter_and_report()))
    th.start()
    th.join()
    w, counts = alone[0]
    assert (w == 2) == all(c == 1 for c in counts)
    assert _blas() == before


def _enter_and_report():
    with _threads.serial_blas(2) as w:
        return w, _blas()


def test_blocked_slab_path_runs_blas_single_threaded_on_its_workers(monkeypatch):
    """Inside the slab path's GEMMs (on the worker threads) BLAS reports one thread, and the
    caller's counts are back afterwards."""
    from cupyortho import schedule as S
    from cupyortho.backends import blocked

    before = _blas()
    if max(before) < 2 or blocked.THREADS < 2:
        pytest.skip("single-threaded BLAS or one CPU: nothing to observe")
    seen = []
    real = blocked._run

    def spy(fn, chunks):
        seen.append(_threads.blas_threads())
        return real(fn, chunks)

    monkeypatch.setattr(blocked, "_run", spy)
    s = S.team_schedule(40, 8)
    th = np.linspace(-1, 1, s.num_angles)
    blocked.matrix(th, s)
    assert seen and all(all(c == 1 for c in counts) for counts in seen)
    assert _blas() == before
