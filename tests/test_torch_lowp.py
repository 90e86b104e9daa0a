"""bfloat16 / float16 in the torch adapter (the cast at the op boundary of cupyortho/torch/_ops.py).

The contract: low-precision tensors are rotated with float32 arithmetic and come back in their own
dtype, rounded once.  Every entry e of a result is within ``u |e64| + c n eps32 s`` of the float64
map evaluated at the same (low-precision) inputs, where ``u`` is the dtype's unit roundoff (2**-8
for bfloat16, 2**-11 for float16), ``eps32`` float32's epsilon and ``s`` the scale of the inputs.
Computing in the low precision itself would miss this bound by far (errors grow with the n - 1
rounds), which is what these tests would catch.  NumPy functions keep float32/float64 only.
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

torch = pytest.importorskip("torch")

import cupyortho as co  # noqa: E402
import cupyortho.torch as ct  # noqa: E402
from cupyortho.errors import DtypeError  # noqa: E402

LOW = [torch.bfloat16, torch.float16]
EPS32 = float(np.finfo(np.float32).eps)


def _u(dtype):
    return torch.finfo(dtype).eps / 2  # unit roundoff of round-to-nearest


def _within(low, ref64, dtype, n, scale=1.0):
    """Entrywise: |low - ref| <= u |ref| + 8 n eps32 scale (the stated bound)."""
    low = low.detach().double()
    ref64 = ref64.detach().double()
    bound = _u(dtype) * ref64.abs() + 8 * n * EPS32 * scale
    excess = (low - ref64).abs() - bound
    assert excess.max().item() <= 0, f"max excess {excess.max().item():.3g} over the bound"


@given(n=st.integers(2, 40), seed=st.integers(0, 2**31 - 1), which=st.sampled_from(LOW))
def test_matrix_rounded_once_from_float32(n, seed, which):
    g = torch.Generator().manual_seed(seed)
    theta = (torch.rand(co.num_angles(n), generator=g, dtype=torch.float64) * 6 - 3).to(which)
    u = ct.matrix(theta)
    assert u.dtype == which
    _within(u, ct.matrix(theta.double()), which, n)


@given(n=st.integers(2, 40), k=st.integers(1, 5), seed=st.integers(0, 2**31 - 1),
       which=st.sampled_from(LOW), transpose=st.booleans())
def test_apply_and_its_gradients(n, k, seed, which, transpose):
    g = torch.Generator().manual_seed(seed)
    theta = (torch.rand(co.num_angles(n), generator=g, dtype=torch.float64) * 6 - 3).to(which)
    x = torch.randn(n, k, generator=g, dtype=torch.float64).to(which)
    cot = torch.randn(n, k, generator=g, dtype=torch.float64).to(which)
    theta.requires_grad_(True)
    x.requires_grad_(True)
    y = ct.apply(theta, x, transpose=transpose)
    assert y.dtype == which
    y.backward(cot)
    assert theta.grad.dtype == which and x.grad.dtype == which

    t64 = theta.detach().double().requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    y64 = ct.apply(t64, x64, transpose=transpose)
    y64.backward(cot.double())
    scale = x64.detach().abs().max().item()
    _within(y, y64, which, n, scale)
    _within(x.grad, x64.grad, which, n, cot.double().abs().max().item())
    # d_theta sums n-row products over k columns: scale |x| |cot| k
    _within(theta.grad, t64.grad, which, n, scale * cot.double().abs().max().item() * k * n)


@pytest.mark.parametrize("which", LOW)
def test_frame_and_matrix_gradients(which):
    n, m = 12, 3
    g = torch.Generator().manual_seed(5)
    for shape, fn in (((co.num_angles(n, m),), lambda t: ct.frame(t, n, m)),
                      ((co.num_angles(n),), lambda t: ct.matrix(t))):
        theta = torch.randn(shape, generator=g, dtype=torch.float64).to(which).requires_grad_(True)
        out = fn(theta)
        cot = torch.randn(out.shape, generator=g, dtype=torch.float64).to(which)
        out.backward(cot)
        assert out.dtype == which and theta.grad.dtype == which
        t64 = theta.detach().double().requires_grad_(True)
        out64 = fn(t64)
        out64.backward(cot.double())
        _within(out, out64, which, n)
        _within(theta.grad, t64.grad, which, n, cot.double().abs().max().item() * n)


@pytest.mark.parametrize("which", LOW)
def test_mixed_precision_promotes_like_torch(which):
    n = 6
    theta = torch.linspace(-1, 1, co.num_angles(n)).to(which).requires_grad_(True)
    x = torch.randn(n, 2, dtype=torch.float32, requires_grad=True)
    y = ct.apply(theta, x)
    assert y.dtype == torch.promote_types(which, torch.float32) == torch.float32
    y.sum().backward()
    assert theta.grad.dtype == which and x.grad.dtype == torch.float32
    both = ct.apply(torch.zeros(co.num_angles(n), dtype=torch.bfloat16), torch.ones(n, 1, dtype=torch.float16))
    assert both.dtype == torch.float32  # bfloat16 with float16 promotes to float32, as in torch


@pytest.mark.parametrize("which", LOW)
def test_unitary_low_precision_params(which):
    n = 5
    p = torch.linspace(-2, 2, co.num_unitary_params(n)).to(which).requires_grad_(True)
    u = ct.unitary(p)
    assert u.dtype == torch.complex64  # torch has no bfloat16 complex: float32 arithmetic, complex64 out
    ref = ct.unitary(p.detach().double())
    assert (u.to(torch.complex128) - ref).abs().max().item() <= 16 * n * EPS32
    u.real.sum().backward()
    assert p.grad.dtype == which
    x = torch.randn(n, 2).to(which)
    assert ct.unitary_apply(p.detach(), x).dtype == torch.complex64


@pytest.mark.parametrize("which", LOW)
def test_layers_train_in_low_precision(which):
    n = 8
    layer = ct.Orthogonal(n, dtype=which)
    with torch.no_grad():
        layer.theta.copy_(torch.linspace(-1, 1, co.num_angles(n)))
    x = torch.randn(4, n).to(which)
    out = layer(x)
    assert out.dtype == which
    out.square().sum().backward()
    assert layer.theta.grad.dtype == which and torch.isfinite(layer.theta.grad.float()).all()

    lin = torch.nn.Linear(n, n, bias=False).to(which)
    torch.nn.utils.parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(n, init="identity"))
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        lin(x).sum().backward()
        opt.step()
    original = lin.parametrizations.weight.original
    assert original.dtype == which and original.grad.dtype == which
    w = lin.weight.detach().double()
    # orthogonal to the dtype's rounding: each entry rounded once (|W^T W - I| <= ~2 sqrt(n) u)
    assert (w.T @ w - torch.eye(n, dtype=torch.float64)).abs().max().item() <= 4 * np.sqrt(n) * _u(which)


def test_numpy_functions_keep_their_float32_float64_contract():
    with pytest.raises(DtypeError, match="theta.*float16"):
        co.matrix(np.zeros(3, np.float16))
    with pytest.raises(DtypeError, match="x.*float16"):
        co.apply(np.zeros(3), np.zeros((3, 2), np.float16))
    with pytest.raises(DtypeError, match="theta"):
        ct.matrix(torch.zeros(3, dtype=torch.int32))  # torch: the low precisions only, not any dtype
