"""torch DistributedDataParallel: gradients of cupyortho layers equal the single-process run.

The test starts two gloo processes on the CPU itself (this file, run as a script, is the worker),
each with half of a global batch, and compares the all-reduced gradients they write with the
gradients of one process on the whole batch, to 1e-12 in float64.  Models: the
``cupyortho.torch.Orthogonal`` layer, and ``nn.Linear`` layers whose weight is parametrized by
``OrthogonalParametrization`` (square, and wide: a frame), with a random stored base ``B`` when
the parametrization has one.  The processes are bounded in time
(a process-group timeout, and the test kills them when they overrun).
"""

from __future__ import annotations

import datetime
import inspect
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

N, BATCH, WORLD = 8, 16, 2


def build_models(torch):
    """The models, with fixed non-trivial parameters (same in every process)."""
    import cupyortho
    import cupyortho.torch as ct
    from torch.nn.utils import parametrize

    gen = torch.Generator().manual_seed(7)
    models = {}
    layer = ct.Orthogonal(N, dtype=torch.float64)
    with torch.no_grad():
        layer.theta.copy_(torch.randn(layer.theta.shape, generator=gen, dtype=torch.float64))
    head = torch.nn.Linear(N, 2, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen, dtype=torch.float64))
        head.bias.copy_(torch.randn(head.bias.shape, generator=gen, dtype=torch.float64))
    models["orthogonal"] = torch.nn.Sequential(layer, head)
    # With a stored base (W = B U(theta)), registration keeps the QR factor of the module's weight in
    # the buffer B, here a random one, so DDP must also broadcast that buffer; without one, start
    # from the identity (registration would otherwise solve an inverse map).
    has_base = "use_base" in inspect.signature(ct.OrthogonalParametrization).parameters
    for name, (rows, cols) in {"linear_square": (N, N), "linear_wide": (3, N)}.items():
        lin = torch.nn.Linear(cols, rows, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=torch.float64))
        param = ct.OrthogonalParametrization(rows, cols) if has_base else \
            ct.OrthogonalParametrization(rows, cols, init="identity")
        parametrize.register_parametrization(lin, "weight", param)
        if has_base:
            assert (param.base - torch.eye(max(rows, cols), dtype=param.base.dtype)).abs().max() > 0.1
        with torch.no_grad():
            original = lin.parametrizations.weight.original
            original.copy_(0.7 * torch.randn(original.shape, generator=gen, dtype=torch.float64))
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen, dtype=torch.float64))
        models[name] = lin
    assert cupyortho.num_angles(N) == models["linear_square"].parametrizations.weight.original.numel()
    return models


def batch(torch):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(BATCH, N, generator=gen, dtype=torch.float64)
    return x


def loss_of(torch, model, x):
    y = model(x)
    return (torch.sin(y) * y).mean()            # a non-quadratic loss, mean over the batch


def gradients(model):
    return {name: p.grad.detach().numpy().copy() for name, p in model.named_parameters()}


def worker(rank, port, out):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        x = batch(torch)
        local = x[rank * BATCH // WORLD:(rank + 1) * BATCH // WORLD]
        for name, model in build_models(torch).items():
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            loss_of(torch, ddp, local).backward()
            np.savez(Path(out) / f"{name}_rank{rank}.npz", **gradients(model))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_single_process(tmp_path):
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.fail("torch.distributed with gloo is required (the CPU torch build has it)")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(WORLD)]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=240)
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out}"

    torch.set_num_threads(1)
    x = batch(torch)
    for name, model in build_models(torch).items():
        loss_of(torch, model, x).backward()
        expected = gradients(model)
        assert all(np.abs(g).max() > 1e-3 for g in expected.values()), name   # non-trivial
        for rank in range(WORLD):
            got = np.load(tmp_path / f"{name}_rank{rank}.npz")
            assert sorted(got.files) == sorted(expected), name
            for param, g in expected.items():
                np.testing.assert_allclose(got[param], g, rtol=0, atol=1e-12, err_msg=f"{name}.{param} rank {rank}")


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
