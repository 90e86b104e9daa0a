"""Every kernel instantiation compiles with NVRTC, without a GPU, and its ptxas report is clean.

For each ``.cu`` file and each target architecture (sm_70, sm_80, sm_90) the file is compiled with
the flags CuPy itself uses (``cupy._core.core.assemble_cupy_compiler_options`` plus the
``-arch``, ``--device-as-default-execution-space`` and ``-ftz=true`` that CuPy appends) and
``-Xptxas=-v``.  The ptxas report must show, for every entry function: no spill stores or loads, no
stack frame (except the
trigonometric range reduction of ``cos_sin``), and few enough registers for the block size its launcher uses.  The lowered names of
the name expressions must be exactly the compiled entry functions.

Needs only CuPy and the NVRTC wheel (the ``test`` extra installs both); skipped only when CuPy
cannot be imported.
"""

import re

import pytest

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install -e '.[test]')")

from cupyortho.backends.cupy import kernels as _kernels, launch as _launch  # noqa: E402

ARCHS = ("70", "80", "90")

#: Threads per block each kernel is launched with (the launchers' constants).
BLOCK_SIZE = {
    "cos_sin": _launch.THREADS,
    "apply_round": _launch.THREADS,
    "apply_vjp_round": _launch.VJP_THREADS,
    "apply_jvp_round": _launch.THREADS,
    "matrix_vjp_round": _launch.THREADS,
    "reduce_partials": _launch.THREADS,
    "apply_fused": _launch.FUSED_THREADS,
    "apply_vjp_fused": _launch.FUSED_THREADS,
    "apply_jvp_fused": _launch.FUSED_THREADS,
    "matrix_vjp_fused": _launch.FUSED_THREADS,
    "build_blocks": _launch.BLOCK_THREADS,
    "block_vjp": _launch.BLOCK_THREADS,
    "unitary_apply_round": _launch.THREADS,
    "unitary_apply_vjp_round": _launch.VJP_THREADS,
    "unitary_apply_jvp_round": _launch.THREADS,
    "unitary_matrix_vjp_round": _launch.THREADS,
}
REGISTERS_PER_SM = 65536
#: Kernels allowed a (small) stack frame: cos/sin of large float32 arguments use the Payne-Hanek
#: range reduction, which keeps a local array.  Spills are never allowed.
STACK_ALLOWED = ("cos_sin<",)


def _nvrtc():
    from cupy_backends.cuda.libs import nvrtc

    return nvrtc


def compile_file(filename, arch):
    """Compile ``filename`` with all its name expressions for ``sm_<arch>``; return
    (log, {name_expression: lowered_name})."""
    from cupy._core import core

    nvrtc = _nvrtc()
    names = _kernels.files()[filename]
    options = list(core.assemble_cupy_compiler_options(())) + [
        f"-I{_kernels.kernel_dir()}",
        f"-arch=sm_{arch}",
        "--device-as-default-execution-space",
        "-ftz=true",
        "-Xptxas=-v",
    ]
    prog = nvrtc.createProgram(_kernels.read_source(filename), filename, [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, options)
        except Exception as exc:
            raise AssertionError(
                f"NVRTC failed on {filename} for sm_{arch}: {exc}\n{nvrtc.getProgramLog(prog)}"
            ) from None
        log = nvrtc.getProgramLog(prog)
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in names}
        assert nvrtc.getCUBIN(prog), f"{filename} sm_{arch}: empty CUBIN"
    finally:
        nvrtc.destroyProgram(prog)
    return log, lowered


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(log):
    """{mangled entry name: dict(stack, spill_stores, spill_loads, registers)} from a ptxas -v log."""
    out = {}
    chunks = _ENTRY.split(log)
    # split gives [prefix, name, arch, body, name, arch, body, ...]
    for k in range(1, len(chunks) - 2, 3):
        name, body = chunks[k], chunks[k + 2]
        props = _PROPS.search(body)
        regs = _REGS.search(body)
        assert props and regs, f"unparsed ptxas report for {name}:\n{body}"
        out[name] = dict(stack=int(props[1]), spill_stores=int(props[2]), spill_loads=int(props[3]),
                         registers=int(regs[1]))
    return out


def test_parse_ptxas_reads_spills():
    # The parser must see a spill when there is one, or the zero-spill assertion could not fail.
    log = (
        "ptxas info    : Compiling entry function '_Z1kIfEvPT_' for 'sm_80'\n"
        "ptxas info    : Function properties for _Z1kIfEvPT_\n"
        "ptxas         .     16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 364 bytes cmem[0]\n"
    )
    assert parse_ptxas(log) == {
        "_Z1kIfEvPT_": dict(stack=16, spill_stores=8, spill_loads=8, registers=255)
    }


def test_every_kernel_has_a_launch_configuration():
    kernels = {name.split("<")[0] for name in _kernels.KERNELS}
    assert kernels == set(BLOCK_SIZE)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("filename", sorted(_kernels.files()))
def test_kernel_file_compiles_without_spills(filename, arch):
    log, lowered = compile_file(filename, arch)
    report = parse_ptxas(log)
    assert set(report) == set(lowered.values()), (
        f"{filename} sm_{arch}: compiled entries {sorted(report)} != lowered names {lowered}"
    )
    for name, mangled in lowered.items():
        info = report[mangled]
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, f"{name} sm_{arch} spills: {info}"
        if not name.startswith(STACK_ALLOWED):
            assert info["stack"] == 0, f"{name} sm_{arch} uses a stack frame: {info}"
        block = BLOCK_SIZE[name.split("<")[0]]
        assert info["registers"] * block <= REGISTERS_PER_SM, (
            f"{name} sm_{arch}: {info['registers']} registers x {block} threads exceeds "
            f"{REGISTERS_PER_SM} registers per block"
        )
