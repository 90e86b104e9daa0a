"""The CPU harness for CUDA kernels (tests/cudasim) tested on its own small kernels.

What must hold for the harness to be worth anything: correct kernels give the right answer for
every seed; a removed barrier, an off-by-one index, a barrier in divergent code, a shared-memory
overflow and a mistyped launch argument are each caught (a failed comparison or an error).
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import cudasim
from cudasim import CompileError, KernelArgumentError, KernelError

KDIR = cudasim.TEST_KERNEL_DIR
SEEDS = range(5)


_T = ("float", "double")
#: Every name expression the tests use, per file: each file is compiled once, like a RawModule.
NAMES = {
    "reduce.cu": [f"block_sum_dyn<{t}>" for t in _T] + [f"block_sum<{t}, {b}>" for t in _T for b in ("true", "false")],
    "bugs.cu": [f"{k}<{t}>" for k in ("scale", "scale_read_past", "scale_write_past", "accumulate",
                                       "shared_uninitialized") for t in _T]
    + ["divergent_barrier", "early_return_barrier", "two_barriers", "shared_write_past", "overwrite",
       "trap_at_five", "static_shared_read_before_write", "racy_accumulate", "atomic_accumulate"],
    "indices.cu": ["coordinates", "block_order"] + [f"{k}<{t}>" for k in ("atomic_sum", "math_functions") for t in _T],
    "warp.cu": [f"{k}<{t}>" for k in ("warp_sum_xor", "warp_sum_down") for t in _T]
    + [f"segment_scan<{t}, {w}>" for t in _T for w in (8, 32)]
    + [f"warp_sum_shared<double, {b}>" for b in ("true", "false")]
    + ["votes", "partial_warp_full_mask", "partial_warp_exact_mask"],
}


def module(filename, names, mode="fast"):
    """The module of ``filename`` with all of NAMES[filename] (``names``: those the test uses)."""
    assert set(names) <= set(NAMES[filename]), set(names) - set(NAMES[filename])
    return cudasim.build_module((KDIR / filename).read_text(), NAMES[filename], include_dirs=[KDIR],
                                filename=str(KDIR / filename), mode=mode)


def reduce_module(mode="fast"):
    return module("reduce.cu", NAMES["reduce.cu"], mode)


def block_sums(x, threads):
    nb = -(-x.size // threads)
    padded = np.zeros(nb * threads, dtype=np.float64)
    padded[:x.size] = x
    return padded.reshape(nb, threads).sum(axis=1)


# ------------------------------------------------------------------------------------- barriers

@pytest.mark.parametrize("ctype,dtype", [("float", np.float32), ("double", np.float64)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_correct_reduction_passes_for_every_seed(ctype, dtype, dynamic):
    m = reduce_module()
    rng = np.random.default_rng(1)
    n, threads = 1000, 256
    x = rng.standard_normal(n).astype(dtype)
    want = block_sums(x, threads)
    for seed in SEEDS:
        out = np.zeros(4, dtype=dtype)
        if dynamic:
            k = m.get_function(f"block_sum_dyn<{ctype}>", seed=seed)
            k((4,), (threads,), (x, out, np.int32(n)), shared_mem=threads * x.itemsize)
        else:
            k = m.get_function(f"block_sum<{ctype}, true>", seed=seed)
            k((4,), (threads,), (x, out, np.int32(n)))
        np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_removed_barrier_is_caught():
    """block_sum<T, false> is block_sum without the barrier between tree levels: some seed must
    give a wrong sum, while the same launches of the correct kernel are right."""
    m = reduce_module()
    x = np.random.default_rng(2).standard_normal(512)
    want = block_sums(x, 128)
    wrong = 0
    for seed in SEEDS:
        good, bad = np.zeros(4), np.zeros(4)
        m.get_function("block_sum<double, true>", seed=seed)((4,), (128,), (x, good, np.int32(512)))
        m.get_function("block_sum<double, false>", seed=seed)((4,), (128,), (x, bad, np.int32(512)))
        np.testing.assert_allclose(good, want, rtol=1e-12)
        wrong += not np.allclose(bad, want, rtol=1e-6)
    assert wrong > 0, "a reduction without its barrier gave the right answer for every seed"


def test_thread_order_depends_on_seed_only():
    """Same seed, same result bit for bit (reproducible failures); the racy kernel's results vary
    across seeds (the order really is shuffled)."""
    m = reduce_module()
    x = np.random.default_rng(3).standard_normal(256)
    results = []
    for seed in (0, 0, 1, 2, 3):
        out = np.zeros(2)
        m.get_function("block_sum<double, false>", seed=seed)((2,), (128,), (x, out, np.int32(256)))
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])
    assert len({r.tobytes() for r in results[1:]}) > 1


@pytest.mark.parametrize("kernel,args", [
    ("divergent_barrier", lambda: (np.zeros(64, np.float32),)),
    ("early_return_barrier", lambda: (np.zeros(64, np.float32), np.int32(40))),
    ("two_barriers", lambda: (np.zeros(64, np.float32),)),
])
def test_barrier_in_divergent_code_is_an_error(kernel, args):
    m = module("bugs.cu", [kernel])
    with pytest.raises(KernelError, match="divergent code"):
        m.get_function(kernel)((1,), (64,), args())


# ------------------------------------------------------------------------------ bounds, indices

@pytest.mark.parametrize("n", [1, 31, 256, 300])
def test_off_by_one_read_is_caught_by_comparison(n):
    """x[i + 1] reads the guard bytes after x: NaN in the output, so the comparison fails."""
    m = module("bugs.cu", ["scale<double>", "scale_read_past<double>"])
    x = np.random.default_rng(4).standard_normal(n)
    grid = (-(-n // 128),)
    good, bad = np.zeros(n), np.zeros(n)
    m.get_function("scale<double>")(grid, (128,), (x, good, np.int32(n)))
    m.get_function("scale_read_past<double>")(grid, (128,), (x, bad, np.int32(n)))
    np.testing.assert_array_equal(good, 2 * x)
    assert not np.allclose(bad, 2 * x, equal_nan=False)
    assert np.isnan(bad[-1])


def test_off_by_one_write_is_an_error():
    m = module("bugs.cu", ["scale_write_past<float>"])
    x = np.ones(100, np.float32)
    y = np.zeros(100, np.float32)
    with pytest.raises(KernelError, match=r"out of bounds of argument 1 .*4 bytes past the end"):
        m.get_function("scale_write_past<float>")((1,), (128,), (x, y, np.int32(100)))


def test_aliased_arguments_stay_aliased():
    """An in-place kernel given the same array twice sees one buffer, as on a GPU."""
    m = module("bugs.cu", ["accumulate<double>"])
    y = np.arange(10.0)
    m.get_function("accumulate<double>")((1,), (32,), (y, y, np.int32(10)))
    np.testing.assert_array_equal(y, 2 * np.arange(10.0))
    z = np.arange(10.0)
    m.get_function("accumulate<double>")((1,), (32,), (z[5:], z[:5], np.int32(5)))
    np.testing.assert_array_equal(z, [5, 7, 9, 11, 13, 5, 6, 7, 8, 9])


def test_write_into_read_only_array_is_an_error():
    m = module("bugs.cu", ["overwrite"])
    a = np.zeros(8)
    a.flags.writeable = False
    with pytest.raises(KernelError, match="read-only"):
        m.get_function("overwrite")((1,), (8,), (a,))
    assert (a == 0).all()


def test_dynamic_shared_overflow_is_an_error():
    m = module("bugs.cu", ["shared_write_past"])
    with pytest.raises(KernelError, match="past the dynamic shared memory"):
        m.get_function("shared_write_past")((1,), (32,), (np.zeros(32, np.float32),), shared_mem=32 * 4)


def test_static_shared_memory_is_poisoned_before_every_block():
    m = module("bugs.cu", ["static_shared_read_before_write"])
    for seed in SEEDS:
        out = np.zeros(3 * 64, np.float32)
        m.get_function("static_shared_read_before_write", seed=seed)((3,), (64,), (out,))
        # `other` is written by thread 0 only after its own read: every thread's sum is NaN when
        # thread 0 runs last, and every block starts from poison (no stale values from the last one)
        blocks = out.reshape(3, 64)
        assert np.isnan(blocks).any(axis=1).all()
        assert set(np.unique(blocks[~np.isnan(blocks)])) <= {1.0}


@pytest.mark.parametrize("ctype,dtype", [("float", np.float32), ("double", np.float64)])
def test_uninitialized_shared_memory_reads_nan(ctype, dtype):
    m = module("bugs.cu", [f"shared_uninitialized<{ctype}>"])
    out = np.zeros(16, dtype)
    m.get_function(f"shared_uninitialized<{ctype}>")((1,), (16,), (out,), shared_mem=16 * out.itemsize)
    assert np.isnan(out).all()


def test_trap_is_an_error():
    m = module("bugs.cu", ["trap_at_five"])
    with pytest.raises(KernelError, match=r"__trap\(\) at .*bugs.cu:\d+"):
        m.get_function("trap_at_five")((1,), (8,), (np.zeros(8, np.int32),))


def test_indices_of_3d_grids_and_blocks():
    m = module("indices.cu", ["coordinates"])
    grid, block = (3, 2, 2), (4, 3, 2)
    nthreads = np.prod(grid) * np.prod(block)
    out = np.full((nthreads, 6), -1, np.int32)
    m.get_function("coordinates")(grid, block, (out,))
    bz, by, bx, tz, ty, tx = np.meshgrid(*(np.arange(d) for d in (grid[2], grid[1], grid[0],
                                                                   block[2], block[1], block[0])),
                                         indexing="ij")
    want = np.stack([bx, by, bz, tx, ty, tz], axis=-1).reshape(-1, 6)
    np.testing.assert_array_equal(out, want)


def test_blocks_run_in_a_shuffled_order():
    m = module("indices.cu", ["block_order"])
    orders = []
    for seed in SEEDS:
        counter, out = np.zeros(1, np.uint32), np.zeros(20, np.uint32)
        m.get_function("block_order", seed=seed)((20,), (32,), (counter, out))
        assert counter[0] == 20
        assert sorted(out) == list(range(20))
        orders.append(tuple(out))
    assert len(set(orders)) > 1
    assert any(o != tuple(range(20)) for o in orders)


@pytest.mark.parametrize("ctype,dtype", [("float", np.float32), ("double", np.float64)])
def test_atomics_and_math(ctype, dtype):
    m = module("indices.cu", [f"atomic_sum<{ctype}>", f"math_functions<{ctype}>"])
    x = np.random.default_rng(5).uniform(-5, 5, 300).astype(dtype)
    total, maxi = np.zeros(1, dtype), np.full(1, -100, np.int32)
    m.get_function(f"atomic_sum<{ctype}>")((3,), (128,), (x, total, maxi, np.int32(300)))
    np.testing.assert_allclose(total[0], x.astype(np.float64).sum(), rtol=1e-4, atol=1e-3)
    assert maxi[0] == x.astype(np.int32).max()
    out = np.zeros((300, 5), dtype)
    m.get_function(f"math_functions<{ctype}>")((3,), (128,), (x, out, np.int32(300)))
    x64 = x.astype(np.float64)
    want = np.stack([np.cos(x64), np.sin(x64), np.ones(300), 1 / np.sqrt(1 + x64**2), x64 * x64 + 1], axis=1)
    np.testing.assert_allclose(out, want, rtol=2e-6 if dtype == np.float32 else 1e-14, atol=1e-6)


# ----------------------------------------------------------------------------------------- warps

@pytest.mark.parametrize("ctype,dtype", [("float", np.float32), ("double", np.float64)])
def test_warp_shuffles(ctype, dtype):
    m = module("warp.cu", [f"warp_sum_xor<{ctype}>", f"warp_sum_down<{ctype}>",
                           f"segment_scan<{ctype}, 8>", f"segment_scan<{ctype}, 32>"])
    x = np.random.default_rng(6).integers(-9, 9, 128).astype(dtype)  # exact sums
    sums = x.reshape(-1, 32).sum(axis=1)
    for seed in SEEDS:
        out = np.zeros_like(x)
        m.get_function(f"warp_sum_xor<{ctype}>", seed=seed)((2,), (64,), (x, out))
        np.testing.assert_array_equal(out, np.repeat(sums, 32))
        out = np.zeros_like(x)
        m.get_function(f"warp_sum_down<{ctype}>", seed=seed)((2,), (64,), (x, out))
        np.testing.assert_array_equal(out[::32], sums)
        # every lane, by CUDA's rule: a source lane past the warp returns the caller's own value
        v = x.reshape(-1, 32).copy()
        lane = np.arange(32)
        for d in (16, 8, 4, 2, 1):
            src = lane + d
            v = v + np.where(src < 32, v[:, np.minimum(src, 31)], v)
        np.testing.assert_array_equal(out, v.ravel())
    for width in (8, 32):
        scan, lane3 = np.zeros_like(x), np.zeros_like(x)
        m.get_function(f"segment_scan<{ctype}, {width}>")((1,), (128,), (x, scan, lane3))
        seg = x.reshape(-1, width)
        np.testing.assert_array_equal(scan, np.cumsum(seg, axis=1).ravel())
        np.testing.assert_array_equal(lane3, np.repeat(seg[:, 3], width))


def test_warp_votes():
    m = module("warp.cu", ["votes"])
    x = np.random.default_rng(7).standard_normal(96).astype(np.float32)
    x[64:] = np.abs(x[64:]) + 1  # third warp: all positive
    ballot, any_, all_ = np.zeros(3, np.uint32), np.zeros(3, np.int32), np.zeros(3, np.int32)
    m.get_function("votes")((1,), (96,), (x, ballot, any_, all_))
    bits = (x.reshape(3, 32) > 0) * (1 << np.arange(32, dtype=np.uint64))
    np.testing.assert_array_equal(ballot, bits.sum(axis=1).astype(np.uint32))
    np.testing.assert_array_equal(any_, (x.reshape(3, 32) > 0).any(axis=1))
    np.testing.assert_array_equal(all_, [0, 0, 1])


def test_missing_syncwarp_is_caught():
    m = module("warp.cu", ["warp_sum_shared<double, true>", "warp_sum_shared<double, false>"])
    x = np.random.default_rng(8).standard_normal(4 * 32)
    want = x.reshape(4, 32).sum(axis=1)
    wrong = 0
    for seed in SEEDS:
        good, bad = np.zeros(4), np.zeros(4)
        m.get_function("warp_sum_shared<double, true>", seed=seed)((4,), (32,), (x, good))
        m.get_function("warp_sum_shared<double, false>", seed=seed)((4,), (32,), (x, bad))
        np.testing.assert_allclose(good, want, rtol=1e-12)
        wrong += not np.allclose(bad, want)
    assert wrong > 0


def test_partial_warps():
    m = module("warp.cu", ["partial_warp_full_mask", "partial_warp_exact_mask"])
    out = np.arange(20, dtype=np.float32)
    m.get_function("partial_warp_exact_mask")((1,), (20,), (out,))
    np.testing.assert_array_equal(out, np.arange(20).reshape(10, 2)[:, ::-1].ravel())
    with pytest.raises(KernelError, match="mask 0xffffffff must name exactly"):
        m.get_function("partial_warp_full_mask")((1,), (20,), (out,))


# ------------------------------------------------------------------------------- launch checks

@pytest.fixture(scope="module")
def scale():
    return module("bugs.cu", ["scale<double>", "scale<float>"]).get_function("scale<double>")


@pytest.mark.parametrize("grid,block,args,kw,match", [
    ((1,), (32,), lambda x, y: (x, y), {}, "takes 3 arguments"),
    ((1,), (32,), lambda x, y: (x, y, 10), {}, r"argument 2 \(int\).*passed as long long"),
    ((1,), (32,), lambda x, y: (x, y, np.int64(10)), {}, r"argument 2 \(int\).*int64"),
    ((1,), (32,), lambda x, y: (x.astype(np.float32), y, np.int32(10)), {}, r"argument 0 \(double const\*\).*float32"),
    ((1,), (32,), lambda x, y: (x, np.zeros((10, 2))[:, 0], np.int32(10)), {}, "C-contiguous"),
    ((1,), (32,), lambda x, y: (x, y, np.zeros(1, np.int32)), {}, "is a scalar, got an array"),
    ((1,), (32,), lambda x, y: (1.0, y, np.int32(10)), {}, "is a pointer, got a scalar"),
    ((1,), (32,), lambda x, y: ([1.0], y, np.int32(10)), {}, "unsupported argument type list"),
    (1, (32,), lambda x, y: (x, y, np.int32(10)), {}, "grid must be a tuple"),
    ((1,), (0,), lambda x, y: (x, y, np.int32(10)), {}, r"block\[0\] must be in \[1, 1024\]"),
    ((1,), (64, 32), lambda x, y: (x, y, np.int32(10)), {}, "2048 threads"),
    ((1, 70000), (32,), lambda x, y: (x, y, np.int32(10)), {}, r"grid\[1\] must be in \[1, 65535\]"),
    ((1,), (32,), lambda x, y: (x, y, np.int32(10)), {"shared_mem": 49153}, "max_dynamic_shared_size_bytes"),
])
def test_launch_errors(scale, grid, block, args, kw, match):
    x, y = np.ones(10), np.zeros(10)
    with pytest.raises(KernelArgumentError, match=match):
        scale(grid, block, args(x, y), **kw)
    assert (y == 0).all()


def test_shared_memory_opt_in(scale):
    m = reduce_module()
    k = m.get_function("block_sum_dyn<double>")
    x = np.ones(64)
    out = np.zeros(1)
    with pytest.raises(KernelArgumentError):
        k((1,), (64,), (x, out, np.int32(64)), shared_mem=100_000)
    k.max_dynamic_shared_size_bytes = 100_000
    k((1,), (64,), (x, out, np.int32(64)), shared_mem=100_000)
    assert out[0] == 64


def test_signature_is_read_from_the_kernel(scale):
    assert [str(p) for p in scale.params] == ["double const*", "double*", "int"]


# ------------------------------------------------------------------------------ build machinery

@pytest.mark.parametrize("text,want", [
    ("extern __shared__ double smem[];", "double* const smem = reinterpret_cast<double*>(::cudasim::dynamic_shared());"),
    ("extern  __shared__ __align__(16) unsigned char raw [ ] ;",
     "unsigned char* const raw = reinterpret_cast<unsigned char*>(::cudasim::dynamic_shared());"),
    ("extern __shared__ __align__(sizeof(T)) T buf[];", "T* const buf = reinterpret_cast<T*>(::cudasim::dynamic_shared());"),
    ("__shared__ float tile[32][33];",
     "__shared__ float tile[32][33]; static ::cudasim::SharedPoison cudasim_shared_poison_0_(&tile, sizeof(tile));"),
    ("__shared__ volatile T a[2 * N], b;",
     "__shared__ volatile T a[2 * N], b; static ::cudasim::SharedPoison cudasim_shared_poison_0_(&a, sizeof(a));"
     " static ::cudasim::SharedPoison cudasim_shared_poison_1_(&b, sizeof(b));"),
    ("// a __shared__ comment;\n/* extern __shared__ double x[]; */", "// a __shared__ comment;\n/* extern __shared__ double x[]; */"),
])
def test_rewrite_of_dynamic_shared_declarations(text, want):
    assert cudasim.rewrite_source(text) == want


def test_compile_errors_point_at_the_kernel_file(tmp_path):
    src = "// bad\ntemplate <typename T>\n__global__ void k(T* x) { x[0] = undeclared; }\n"
    with pytest.raises(CompileError, match=r"bad\.cu:3"):
        cudasim.build_module(src, ["k<float>"], filename="bad.cu")


def test_modules_are_cached(tmp_path, monkeypatch):
    src = (KDIR / "reduce.cu").read_text()
    a = cudasim.build_module(src, NAMES["reduce.cu"], include_dirs=[KDIR], filename=str(KDIR / "reduce.cu"))
    assert reduce_module() is a
    assert a.path.exists() and a.path.parent == cudasim.cache_dir()
    # a changed include is a different module (built in a private cache: tmp paths are one-off keys)
    monkeypatch.setenv("CUDASIM_CACHE_DIR", str(tmp_path / "cache"))
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "helpers.cuh").write_text((KDIR / "helpers.cuh").read_text() + "\n// changed\n")
    b = cudasim.build_module(src, ["block_sum_dyn<float>"], include_dirs=[inc])
    assert b.path != a.path and b.path.parent == tmp_path / "cache"


def test_ucontext_fibers_agree_with_the_fast_switch():
    """The portable ucontext fibers and the x86-64 switch give identical results for one seed."""
    x = np.random.default_rng(9).standard_normal(256)
    outs = []
    for mode in ("fast", "ucontext"):
        m = reduce_module(mode)
        out = np.zeros(2)
        m.get_function("block_sum<double, false>", seed=3)((2,), (128,), (x, out, np.int32(256)))
        good = np.zeros(2)
        m.get_function("block_sum<double, true>", seed=3)((2,), (128,), (x, good, np.int32(256)))
        np.testing.assert_allclose(good, block_sums(x, 128), rtol=1e-12)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_cpu_device_records_launches():
    dev = cudasim.CpuDevice(seed=1, kernels=dict.fromkeys(NAMES["reduce.cu"], "reduce.cu"), kernel_dir=KDIR)
    assert dev.xp is np
    f = dev.get_function("block_sum_dyn<double>")
    out = np.zeros(1)
    f((1,), (32,), (np.ones(32), out, np.int32(32)), shared_mem=256)
    assert out[0] == 32
    assert dev.launched == {"block_sum_dyn<double>": 1}
    with pytest.raises(KeyError, match="unknown kernel"):
        dev.get_function("nope<float>")


# ---------------------------------------------------------------------------- sanitizer modes

def _sanitized_python(runtime, options):
    """(command prefix, env) for a Python with lib<runtime>.so preloaded, or skip if g++ lacks it."""
    lib = subprocess.run(["g++", f"-print-file-name=lib{runtime}.so"], capture_output=True, text=True).stdout.strip()
    if not pathlib.Path(lib).is_absolute():
        pytest.skip(f"g++ has no lib{runtime}.so: the {runtime} mode is unavailable on this machine")
    tests_dir = pathlib.Path(__file__).resolve().parent
    env = {**os.environ, "LD_PRELOAD": lib, options[0]: options[1],
           "PYTHONPATH": f"{tests_dir}:{tests_dir.parent}"}
    return [sys.executable, "-c"], env


ASAN_SCRIPT = r"""
import numpy as np
import cudasim
K = cudasim.TEST_KERNEL_DIR
m = cudasim.build_module((K / "reduce.cu").read_text(), ["block_sum<double, true>"], include_dirs=[K],
                         filename="reduce.cu", mode="asan")
out = np.zeros(2)
m.get_function("block_sum<double, true>")((2,), (256,), (np.ones(512), out, np.int32(512)))
assert (out == 256).all(), out
print("CLEAN", flush=True)
src = ('extern "C" __global__ void over(float* out) { __shared__ float buf[32]; buf[threadIdx.x] = 1.0f; '
       '__syncthreads(); out[threadIdx.x] = buf[threadIdx.x]; }')
cudasim.build_module(src, ["over"], filename="over.cu", mode="asan").get_function("over")(
    (1,), (33,), (np.zeros(33, np.float32),))
print("NOT CAUGHT")
"""


def test_asan_mode_catches_static_shared_overflow():
    """mode="asan" (ucontext fibers, -fsanitize=address) in a process with libasan preloaded: a
    correct kernel runs clean; a static __shared__ array indexed one past its end is reported."""
    cmd, env = _sanitized_python("asan", ("ASAN_OPTIONS", "detect_leaks=0"))
    run = subprocess.run(cmd + [ASAN_SCRIPT], capture_output=True, text=True, env=env)
    assert "CLEAN" in run.stdout, run.stderr[-3000:]
    assert run.returncode != 0 and "global-buffer-overflow" in run.stderr, run.stderr[-3000:]
    assert "over.cu:1" in run.stderr and "NOT CAUGHT" not in run.stdout


TSAN_SCRIPT = r"""
import sys
import numpy as np
import cudasim
K = cudasim.TEST_KERNEL_DIR
def mod(name, names):
    return cudasim.build_module((K / name).read_text(), names, include_dirs=[K], filename=str(K / name), mode="tsan")
reduce = mod("reduce.cu", ["block_sum<double, true>", "block_sum<double, false>"])
bugs = mod("bugs.cu", ["racy_accumulate", "atomic_accumulate"])
x = np.ones(512)
out = np.zeros(2)
reduce.get_function("block_sum<double, true>")((2,), (256,), (x, out, np.int32(512)))
assert (out == 256).all()
total = np.zeros(1)
bugs.get_function("atomic_accumulate")((3,), (128,), (x, total, np.int32(300)))
assert total[0] == 300
# the package's kernels: fused and per-round sweeps, the blocked team path, matrix VJPs
from cupyortho.backends import numpy_backend as nb
from cupyortho.backends.cupy import so as cb
from cupyortho.schedule import circle_schedule, team_schedule
rng = np.random.default_rng(0)
for s, paths in ((circle_schedule(33), ("fused", "rounds")), (team_schedule(33, 4), ("fused",))):
    for path in paths:
        dev = cudasim.CpuDevice(0, mode="tsan", multiprocessor_count=1)
        theta, y = rng.standard_normal(s.num_angles), rng.standard_normal((33, 7))
        assert np.allclose(cb._impl_apply(dev, theta, y, s, False, path), nb.apply(theta, y, s))
        assert np.allclose(cb._impl_apply_vjp(dev, theta, y, y, s, False, None, path)[0], nb.apply_vjp(theta, y, y, s)[0])
        assert np.allclose(cb._impl_apply_jvp(dev, theta, y, theta, y, s, False, path), nb.apply_jvp(theta, y, theta, y, s))
        cot = rng.standard_normal((33, 33))
        mpath = "rounds" if (path, s.kind) == ("rounds", "circle") else None
        assert np.allclose(cb._impl_matrix(dev, theta, s, mpath), nb.matrix(theta, s))
        assert np.allclose(cb._impl_matrix_vjp(dev, theta, cot, s, path=mpath), nb.matrix_vjp(theta, cot, s))
from cupyortho.backends import numpy_unitary as nu
from cupyortho.backends.cupy import un as cu
for s in (circle_schedule(8), team_schedule(8, 2)):
    dev = cudasim.CpuDevice(0, mode="tsan")
    p, t = rng.standard_normal(64), rng.standard_normal(64)
    z = (rng.standard_normal((8, 3)) + 1j * rng.standard_normal((8, 3)))
    g = (rng.standard_normal((8, 8)) + 1j * rng.standard_normal((8, 8)))
    assert np.allclose(cu._impl_unitary_vjp(dev, p, g, s), nu.unitary_vjp(p, g, s))
    assert np.allclose(cu._impl_unitary_apply_vjp(dev, p, z, z, s, True)[0], nu.unitary_apply_vjp(p, z, z, s, True)[0])
    assert np.allclose(cu._impl_unitary_apply_jvp(dev, p, z, t, z, s), nu.unitary_apply_jvp(p, z, t, z, s))
print("CLEAN", flush=True)
sys.stderr.write("=== racy_accumulate\n")
sys.stderr.flush()
total[0] = 0
bugs.get_function("racy_accumulate")((3,), (128,), (x, total, np.int32(300)))
assert total[0] == 300  # the lost-update race does not show in the result on the CPU
sys.stderr.write("=== block_sum<double, false>\n")
sys.stderr.flush()
reduce.get_function("block_sum<double, false>")((2,), (256,), (x, out, np.int32(512)))
print("DONE", flush=True)
"""


def test_tsan_mode_reports_races_the_result_does_not_show():
    """mode="tsan" (-fsanitize=thread, each CUDA thread a TSan fiber, barriers as release/acquire)
    in a process with libtsan preloaded: correct kernels and every package kernel (float64; SO(33)
    on both schedules and the fused, per-round and blocked paths; U(8)) run without a report; a lost-update race whose sum
    comes out right on the CPU, and the reduction without its barrier, are each reported at their
    source line."""
    cmd, env = _sanitized_python("tsan", ("TSAN_OPTIONS", "halt_on_error=0 exitcode=66"))
    run = subprocess.run(cmd + [TSAN_SCRIPT], capture_output=True, text=True, env=env)
    assert "CLEAN" in run.stdout and "DONE" in run.stdout, run.stderr[-4000:]
    before, rest = run.stderr.split("=== racy_accumulate\n", 1)
    lost, missing_barrier = rest.split("=== block_sum<double, false>\n", 1)
    assert "ThreadSanitizer" not in before, before[-4000:]
    assert "WARNING: ThreadSanitizer: data race" in lost and "bugs.cu:" in lost, lost[-3000:]
    assert "WARNING: ThreadSanitizer: data race" in missing_barrier, missing_barrier[-3000:]
    assert "reduce.cu:18" in missing_barrier, missing_barrier[-3000:]
    assert run.returncode == 66


def test_lost_update_race_is_invisible_without_tsan():
    """The gap the TSan mode closes: in the default mode fibers never interleave between barriers,
    so a non-atomic ``out[0] += x[i]`` from every thread still sums correctly."""
    m = module("bugs.cu", ["racy_accumulate"])
    total = np.zeros(1)
    m.get_function("racy_accumulate")((3,), (128,), (np.ones(300), total, np.int32(300)))
    assert total[0] == 300
