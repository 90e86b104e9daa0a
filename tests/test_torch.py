"""PyTorch adapter: ops against the NumPy reference, gradcheck/opcheck, torch.compile, the layer.

Every op is checked against cupyortho's NumPy functions (the reference), its gradients against
finite differences (``torch.autograd.gradcheck``, float64), and its registration with
``torch.library.opcheck``.  CUDA tests skip without a GPU (torch here is a CPU build).
"""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cupyortho as co  # noqa: E402
import cupyortho.torch as ct  # noqa: E402
from cupyortho.errors import AngleCountError, BackendMismatchError, DtypeError, ShapeError  # noqa: E402

SCHEDULES = ["circle", "team", co.team_schedule(7, 2)]
cuda_only = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA build of torch (not on this machine)"
)


def _t(a, requires_grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=requires_grad)


def _sched_name(s):
    return s if isinstance(s, str) else repr(s)


# --------------------------------------------------------------------------- forward = reference


@pytest.mark.parametrize("schedule", SCHEDULES, ids=_sched_name)
def test_forward_matches_numpy(rng, schedule):
    n, m = 7, 3
    theta = rng.normal(size=(2, co.num_angles(n)))
    x = rng.normal(size=(3, 1, n, 4))
    tf = rng.normal(size=co.num_angles(n, m))
    np.testing.assert_allclose(
        ct.matrix(_t(theta), schedule=schedule).numpy(), co.matrix(theta, schedule=schedule), rtol=0, atol=1e-14
    )
    for transpose in (False, True):
        got = ct.apply(_t(theta), _t(x), transpose=transpose, schedule=schedule).numpy()
        ref = co.apply(theta, x, transpose=transpose, schedule=schedule)
        assert got.shape == (3, 2, n, 4)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14)
    v = rng.normal(size=n)
    np.testing.assert_allclose(
        ct.apply(_t(theta[0]), _t(v), schedule=schedule).numpy(), co.apply(theta[0], v, schedule=schedule), atol=1e-14
    )
    np.testing.assert_allclose(
        ct.frame(_t(tf), n, m, schedule=schedule).numpy(), co.frame(tf, n, m, schedule=schedule), atol=1e-14
    )


def test_float32_and_promotion(rng):
    theta = rng.normal(size=co.num_angles(5)).astype(np.float32)
    u = ct.matrix(torch.from_numpy(theta))
    assert u.dtype == torch.float32
    np.testing.assert_allclose(u.numpy(), co.matrix(theta), atol=1e-6)
    y = ct.apply(torch.from_numpy(theta), torch.ones(5, 2, dtype=torch.float64))
    assert y.dtype == torch.float64


def test_cpu_inputs_are_shared_not_copied():
    t = torch.arange(6.0, dtype=torch.float64)
    view = ct._to_numpy(t)
    assert np.shares_memory(view, t.numpy())
    a = np.arange(4.0)
    assert ct._from_numpy(a).data_ptr() == a.ctypes.data
    # an output that would alias an input (forbidden for custom ops) is copied
    out = ct._call(lambda v: v[1:], t)
    assert torch.equal(out, t[1:]) and not np.shares_memory(out.numpy(), t.numpy())


def test_inputs_unchanged(rng):
    theta = _t(rng.normal(size=co.num_angles(6)), requires_grad=True)
    x = _t(rng.normal(size=(6, 3)), requires_grad=True)
    before = theta.detach().clone(), x.detach().clone()
    (ct.apply(theta, x).sum() + ct.matrix(theta).sum() + ct.frame(theta[:9], 6, 2).sum()).backward()
    assert torch.equal(theta.detach(), before[0]) and torch.equal(x.detach(), before[1])


# --------------------------------------------------------------------------- derivatives


@pytest.mark.parametrize("schedule", ["circle", "team"])
def test_gradcheck(rng, schedule):
    n = 5
    theta = _t(rng.normal(size=(2, co.num_angles(n))), requires_grad=True)
    x = _t(rng.normal(size=(3, 1, n, 2)), requires_grad=True)
    v = _t(rng.normal(size=n), requires_grad=True)
    tf = _t(rng.normal(size=co.num_angles(n, 2)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ct.matrix(t, schedule=schedule), (theta,))
    assert torch.autograd.gradcheck(lambda t: ct.frame(t, n, 2, schedule=schedule), (tf,))
    for transpose in (False, True):
        assert torch.autograd.gradcheck(
            lambda t, a: ct.apply(t, a, transpose=transpose, schedule=schedule), (theta, x)
        )
    assert torch.autograd.gradcheck(lambda t, a: ct.apply(t, a, schedule=schedule), (theta[0].detach().requires_grad_(), v))


def test_gradient_matches_numpy_vjp(rng):
    n = 6
    theta = rng.normal(size=co.num_angles(n))
    g = rng.normal(size=(n, n))
    t = _t(theta, requires_grad=True)
    (ct.matrix(t) * _t(g)).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), co.matrix_vjp(theta, g), atol=1e-13)


def test_double_backward_raises_clearly(rng):
    theta = _t(rng.normal(size=co.num_angles(4)), requires_grad=True)
    x = _t(rng.normal(size=(4, 2)), requires_grad=True)
    p = _t(rng.normal(size=16), requires_grad=True)
    for f, arg in ((lambda: ct.matrix(theta), theta), (lambda: ct.frame(theta[:5], 4, 2), theta),
                   (lambda: ct.apply(theta, x), theta), (lambda: ct.unitary(p).abs(), p),
                   (lambda: ct.unitary_apply(p, x).abs(), p)):
        (g,) = torch.autograd.grad((f() ** 2).sum(), arg, create_graph=True)
        with pytest.raises(NotImplementedError, match="once differentiable"):
            g.sum().backward()


def _opcheck_cases(rng):
    n, m = 5, 2
    A, Af = co.num_angles(n), co.num_angles(n, m)
    th = _t(rng.normal(size=(2, A)), requires_grad=True)
    tf = _t(rng.normal(size=Af), requires_grad=True)
    x = _t(rng.normal(size=(n, 3)), requires_grad=True)
    y = ct.apply(th, x).detach()
    # The backward ops take detached inputs: differentiating them raises by design (once differentiable),
    # which test_double_backward_raises_clearly covers.
    d = {id(a): a.detach() for a in (th, tf, x)}
    thd, tfd, xd = d[id(th)], d[id(tf)], d[id(x)]
    return [
        (ct._matrix_op, (th, n, None, None)),
        (ct._matrix_op, (th, n, "team", 2)),
        (ct._matrix_vjp_op, (thd, _t(rng.normal(size=(2, n, n))), ct.matrix(thd).detach(), n, None, None)),
        (ct._frame_op, (tf, n, m, "circle", None)),
        (ct._frame_vjp_op, (tfd, _t(rng.normal(size=(n, m))), n, m, None, None)),
        (ct._apply_op, (th, x, False, None, None)),
        (ct._apply_op, (th, x, True, "team", 4)),
        (ct._apply_vjp_op, (thd, xd, y, _t(rng.normal(size=(2, n, 3))), False, None, None)),
    ]


def test_opcheck_every_op(rng):
    for op, args in _opcheck_cases(rng):
        torch.library.opcheck(op, args)


def test_torch_compile_forward_backward(rng):
    n = 5
    theta = rng.normal(size=co.num_angles(n))
    x = rng.normal(size=(n, 3))

    def loss(t, a):
        return (ct.apply(t, a) ** 2 * torch.arange(3.0, dtype=t.dtype)).sum() + ct.matrix(t)[0, 1:].sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    results = []
    for f in (loss, compiled):
        t, a = _t(theta, requires_grad=True), _t(x, requires_grad=True)
        value = f(t, a)
        value.backward()
        results.append((value.detach(), t.grad, a.grad))
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp, eager, rtol=1e-12, atol=1e-12)


def test_vmap_forward_and_backward(rng):
    """torch.vmap of the ops (register_vmap), and ordinary backward through the vmapped graph.

    (torch.func.grad/jacrev over these ops fail in torch itself: pytorch#168393, pytorch#179652.)
    """
    from torch.func import vmap

    n, B = 5, 3
    ths = _t(rng.normal(size=(B, co.num_angles(n))))
    xs = _t(rng.normal(size=(B, 2, n, 2)))
    for in_dims, args in (((0, 0), (ths, xs)), ((None, 0), (ths[0], xs)), ((0, None), (ths, xs[0]))):
        mapped = vmap(lambda t, a: ct.apply(t, a, transpose=True), in_dims=in_dims)(*args)
        loop = torch.stack([ct.apply(*[a if d is None else a[b] for a, d in zip(args, in_dims)], transpose=True)
                            for b in range(B)])
        torch.testing.assert_close(mapped, loop, rtol=0, atol=1e-14)
    torch.testing.assert_close(vmap(ct.matrix)(ths), ct.matrix(ths), rtol=0, atol=0)
    tf = ths[:, : co.num_angles(n, 2)]
    torch.testing.assert_close(vmap(lambda t: ct.frame(t, n, 2))(tf), ct.frame(tf, n, 2), rtol=0, atol=0)
    vs = _t(rng.normal(size=(2, B, n)))
    torch.testing.assert_close(vmap(vmap(lambda v: ct.apply(ths[0], v)))(vs), ct.apply(ths[0], vs[..., None])[..., 0])
    # gradients through vmap with a shared theta (the VJP ops are vmapped too)
    results = []
    for use_vmap in (True, False):
        t = ths[0].clone().requires_grad_(True)
        x = xs.clone().requires_grad_(True)
        y = vmap(lambda a: ct.apply(t, a))(x) if use_vmap else ct.apply(t, x)
        (y ** 2 * torch.arange(2.0, dtype=y.dtype)).sum().backward()
        results.append((t.grad, x.grad))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- unitary


def test_unitary_ops(rng):
    import cupyortho._unitary as cu
    from torch.func import vmap

    n = 4
    p = _t(rng.normal(size=(2, n * n)), requires_grad=True)
    ps = _t(rng.normal(size=n * n - 1), requires_grad=True)
    xc = torch.tensor(rng.normal(size=(3, 1, n, 2)) + 1j * rng.normal(size=(3, 1, n, 2)), requires_grad=True)
    xr = _t(rng.normal(size=n), requires_grad=True)
    u = ct.unitary(p, schedule="team")
    assert u.dtype == torch.complex128
    np.testing.assert_allclose(u.detach().numpy(), cu.unitary(p.detach().numpy(), schedule="team"), atol=1e-14)
    np.testing.assert_allclose(ct.unitary_apply(p, xc, adjoint=True).detach().numpy(),
                               cu.unitary_apply(p.detach().numpy(), xc.detach().numpy(), adjoint=True), atol=1e-14)
    assert ct.unitary(p.detach().float()).dtype == torch.complex64
    assert torch.autograd.gradcheck(lambda q: ct.unitary(q), (p,))
    assert torch.autograd.gradcheck(lambda q: ct.unitary(q, special=True), (ps,))
    for adjoint in (False, True):
        assert torch.autograd.gradcheck(lambda q, a: ct.unitary_apply(q, a, adjoint=adjoint), (p, xc))
        assert torch.autograd.gradcheck(lambda q, a: ct.unitary_apply(q, a, adjoint=adjoint, special=True), (ps, xr))
    y = ct.unitary_apply(p, xc).detach()
    pd, xd = p.detach(), xc.detach()
    for op, args in (
        (ct._unitary_op, (p, n, False, None, None)),
        (ct._unitary_op, (ps, n, True, "team", 2)),
        (ct._unitary_apply_op, (p, xc, False, True, "team", 2)),
        (ct._unitary_vjp_op, (pd, torch.randn(2, n, n, dtype=torch.complex128), n, False, None, None)),
        (ct._unitary_apply_vjp_op, (pd, xd, y, torch.randn_like(y), False, False, None, None)),
    ):
        torch.library.opcheck(op, args)
    torch.testing.assert_close(vmap(ct.unitary)(pd), ct.unitary(pd), rtol=0, atol=0)
    torch.testing.assert_close(vmap(lambda a: ct.unitary_apply(pd[0], a))(xd[:, 0]), ct.unitary_apply(pd[0], xd[:, 0]))


# --------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    with pytest.raises(DtypeError, match="theta"):
        ct.matrix(torch.zeros(3, dtype=torch.int32))
    with pytest.raises(AngleCountError, match="theta"):
        ct.matrix(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(AngleCountError):
        ct.apply(torch.zeros(3, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ShapeError, match="input"):
        ct.Orthogonal(4)(torch.zeros(2, 3))
    with pytest.raises(DtypeError, match="input"):
        ct.Orthogonal(4)(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(BackendMismatchError):
        ct._call(lambda a, b: a, torch.zeros(2), torch.zeros(2, device="meta"))


def test_import_cupyortho_imports_no_framework():
    code = "import sys, cupyortho; assert 'torch' not in sys.modules and 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- layer


@pytest.mark.parametrize("rows", [2, 9])  # fewer rows than n -> apply; more -> materialize + matmul
def test_orthogonal_layer_is_linear_with_orthogonal_weight(rng, rows):
    n = 6
    layer = ct.Orthogonal(n, dtype=torch.float64)
    with torch.no_grad():
        layer.theta.copy_(_t(rng.normal(size=co.num_angles(n))))
    x = _t(rng.normal(size=(rows, n)))
    w = layer.matrix()
    torch.testing.assert_close(layer(x), x @ w.mT, rtol=0, atol=1e-13)
    torch.testing.assert_close(w.mT @ w, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-13)
    assert torch.linalg.det(w).item() == pytest.approx(1.0, abs=1e-12)
    # gradients agree between the two forward paths
    for path_rows in (rows, 3 * n):
        layer.theta.grad = None
        xx = x.repeat(path_rows // rows + 1, 1)[:path_rows] if path_rows != rows else x
        layer(xx).pow(2).mul(torch.arange(n, dtype=torch.float64)).sum().backward()
        ref = _t(layer.theta.detach().numpy())
        ref.requires_grad_(True)
        (xx @ ct.matrix(ref).mT).pow(2).mul(torch.arange(n, dtype=torch.float64)).sum().backward()
        torch.testing.assert_close(layer.theta.grad, ref.grad, rtol=1e-12, atol=1e-12)


def test_orthogonal_layer_stiefel(rng):
    n, m = 6, 2
    layer = ct.Orthogonal(n, m, schedule="team", dtype=torch.float64)
    with torch.no_grad():
        layer.theta.normal_()
    x = _t(rng.normal(size=(4, 3, n)))
    w = layer.weight
    assert w.shape == (m, n)
    torch.testing.assert_close(w @ w.mT, torch.eye(m, dtype=torch.float64), rtol=0, atol=1e-13)
    torch.testing.assert_close(layer(x), x @ w.mT, rtol=0, atol=1e-13)
    assert layer(x).shape == (4, 3, m)


def test_state_dict_round_trip(rng, tmp_path):
    layer = ct.Orthogonal(5, 3, schedule="circle", dtype=torch.float64)
    with torch.no_grad():
        layer.theta.normal_()
    torch.save(layer.state_dict(), tmp_path / "o.pt")
    other = ct.Orthogonal(5, 3, schedule="circle", dtype=torch.float64)
    other.load_state_dict(torch.load(tmp_path / "o.pt"))
    assert set(other.state_dict()) == {"theta", "base", "_extra_state"}
    x = _t(rng.normal(size=(2, 5)))
    assert torch.equal(other(x), layer(x))
    assert torch.equal(other.matrix(), layer.matrix())


def _procrustes_problem(n, seed):
    from scipy.stats import special_ortho_group

    r = np.random.default_rng(seed)
    target = special_ortho_group.rvs(n, random_state=r)
    x = r.normal(size=(40, n))
    return _t(x), _t(x @ target.T), _t(target)


def test_training_fits_procrustes_target():
    n = 5
    x, y, target = _procrustes_problem(n, 3)
    layer = ct.Orthogonal(n, dtype=torch.float64)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1, max_iter=200, tolerance_grad=1e-14,
                            tolerance_change=0, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ((layer(x) - y) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    err = (layer.matrix() - target).abs().max().item()
    assert err < 1e-6, err


def test_checkpoint_save_load_continue(tmp_path):
    n = 5
    x, y, _ = _procrustes_problem(n, 4)

    def make():
        layer = ct.Orthogonal(n, dtype=torch.float64)
        return layer, torch.optim.Adam(layer.parameters(), lr=0.05)

    def steps(layer, opt, k):
        for _ in range(k):
            opt.zero_grad()
            ((layer(x) - y) ** 2).mean().backward()
            opt.step()

    layer, opt = make()
    steps(layer, opt, 5)
    torch.save({"model": layer.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    steps(layer, opt, 5)

    resumed, ropt = make()
    ckpt = torch.load(tmp_path / "ckpt.pt")
    resumed.load_state_dict(ckpt["model"])
    ropt.load_state_dict(ckpt["opt"])
    steps(resumed, ropt, 5)
    assert torch.equal(resumed.theta, layer.theta)
    loss = ((layer(x) - y) ** 2).mean().item()
    assert loss < ((x - y) ** 2).mean().item()  # the ten steps did descend


# --------------------------------------------------------------------------- parametrization


def test_parametrization_forward_shapes(rng):
    for shape, m in (((5, 5), None), ((5, 2), 2), ((2, 5), 2)):
        p = ct.OrthogonalParametrization(*shape)
        theta = _t(rng.normal(size=p.num_angles))
        w = p(theta)
        assert w.shape == shape
        q = w.mT if shape[0] < shape[1] else w
        torch.testing.assert_close(q.mT @ q, torch.eye(q.shape[1], dtype=torch.float64), rtol=0, atol=1e-13)
        ref = co.matrix(theta.numpy()) if m is None else co.frame(theta.numpy(), 5, m)
        np.testing.assert_allclose(q.numpy(), ref, atol=1e-14)


@pytest.mark.parametrize("features", [(4, 4), (4, 2), (2, 4)])  # (in, out): weight is (out, in)
def test_register_parametrization_on_linear(features):
    from torch.nn.utils import parametrize
    from scipy.stats import ortho_group

    torch.manual_seed(0)
    lin = torch.nn.Linear(*features, dtype=torch.float64)
    w0 = lin.weight.detach().clone()
    parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(*w0.shape))
    w = lin.weight
    q = w.mT if w.shape[0] < w.shape[1] else w
    torch.testing.assert_close(q.mT @ q, torch.eye(q.shape[1], dtype=torch.float64), rtol=0, atol=1e-12)
    # the initial weight was replaced by the Q factor of its QR (R with a positive diagonal)
    q0, r0 = torch.linalg.qr(w0.mT if w0.shape[0] < w0.shape[1] else w0)
    q0 = q0 * torch.sign(torch.diagonal(r0))
    if q0.shape[0] == q0.shape[1] and torch.linalg.det(q0) < 0:
        q0[:, -1] = -q0[:, -1]
    torch.testing.assert_close(q, q0, rtol=0, atol=1e-9)
    # assigning an orthogonal matrix reproduces it (right_inverse then forward)
    big, small = max(w.shape), min(w.shape)
    target = ortho_group.rvs(big, random_state=1)
    if big == small and np.linalg.det(target) < 0:
        target[:, 0] = -target[:, 0]
    target = _t(target[:, :small])
    target = target.mT if w.shape[0] < w.shape[1] else target
    lin.weight = target
    torch.testing.assert_close(lin.weight, target, rtol=0, atol=1e-9)
    # and it trains: gradients reach the angles
    lin(torch.ones(3, features[0], dtype=torch.float64)).sum().backward()
    assert lin.parametrizations.weight.original.grad is not None


@pytest.mark.parametrize("use_base", [False, True])
def test_parametrization_identity_init_skips_the_inverse(monkeypatch, use_base):
    from torch.nn.utils import parametrize

    def refuse(*args, **kwargs):
        raise AssertionError("the inverse map must not run at registration with init='identity'")

    monkeypatch.setitem(sys.modules, "cupyortho.inverse", type("NoInverse", (), {
        "angles_from_matrix": staticmethod(refuse), "angles_from_frame": staticmethod(refuse)}))
    monkeypatch.setattr(co, "inverse", sys.modules["cupyortho.inverse"], raising=False)
    for features in ((32, 32), (32, 8)):
        lin = torch.nn.Linear(*features, dtype=torch.float64)
        p = ct.OrthogonalParametrization(features[1], features[0], init="identity", use_base=use_base)
        parametrize.register_parametrization(lin, "weight", p)
        torch.testing.assert_close(lin.weight, torch.eye(*lin.weight.shape, dtype=torch.float64), rtol=0, atol=0)
        if use_base:  # later assignments are stored in the base: no inverse map at all
            target = lin.weight.detach().flip(0).clone()
            lin.weight = target
            assert torch.equal(lin.weight, target)
        else:
            with pytest.raises(AssertionError, match="must not run"):  # later assignments do invert
                lin.weight = lin.weight.detach().clone()
    with pytest.raises(ValueError, match="init"):
        ct.OrthogonalParametrization(3, init="hair")


def test_parametrized_checkpoint_round_trip(tmp_path):
    from torch.nn.utils import parametrize

    def make():
        torch.manual_seed(0)
        lin = torch.nn.Linear(4, 4, bias=False, dtype=torch.float64)
        parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(4))
        return lin

    lin = make()
    with torch.no_grad():
        lin.parametrizations.weight.original.add_(0.1)
    torch.save(lin.state_dict(), tmp_path / "p.pt")
    other = make()
    other.load_state_dict(torch.load(tmp_path / "p.pt"))
    assert torch.equal(other.weight, lin.weight)


# --------------------------------------------------------------------------- CUDA (skipped here)


@cuda_only
def test_cuda_matches_cpu(rng):  # pragma: no cover - needs a GPU
    pytest.importorskip("cupy")
    n = 9
    theta = rng.normal(size=(2, co.num_angles(n)))
    x = rng.normal(size=(n, 4))
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        cpu_t = torch.tensor(theta, dtype=dtype, requires_grad=True)
        cpu_x = torch.tensor(x, dtype=dtype, requires_grad=True)
        gpu_t = cpu_t.detach().cuda().requires_grad_(True)
        gpu_x = cpu_x.detach().cuda().requires_grad_(True)
        for t, a in ((cpu_t, cpu_x), (gpu_t, gpu_x)):
            (ct.apply(t, a).sum() + ct.matrix(t).pow(2).mul(torch.arange(n, device=t.device)).sum()
             + ct.frame(t[:, :co.num_angles(n, 3)], n, 3).sum()).backward()
        torch.testing.assert_close(gpu_t.grad.cpu(), cpu_t.grad, rtol=tol, atol=tol)
        torch.testing.assert_close(gpu_x.grad.cpu(), cpu_x.grad, rtol=tol, atol=tol)
        torch.testing.assert_close(ct.matrix(gpu_t).cpu(), ct.matrix(cpu_t), rtol=tol, atol=tol)


@cuda_only
def test_cuda_on_side_stream(rng):  # pragma: no cover - needs a GPU
    pytest.importorskip("cupy")
    n = 64
    theta = torch.tensor(rng.normal(size=co.num_angles(n)), device="cuda")
    ref = ct.matrix(theta)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        u = ct.matrix(theta * 1.0)
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(u, ref)


def test_parametrization_reflection_warns_and_flips_last_column():
    from scipy.stats import special_ortho_group
    from torch.nn.utils import parametrize

    n = 4
    q = special_ortho_group.rvs(n, random_state=3)
    w = q.copy()
    w[:, -1] *= -1  # det = -1
    layer = torch.nn.Linear(n, n, bias=False).double()
    parametrize.register_parametrization(layer, "weight", ct.OrthogonalParametrization(n, init="identity",
                                                                                       use_base=False))
    with pytest.warns(UserWarning, match="determinant -1"):
        layer.weight = torch.as_tensor(w)
    np.testing.assert_allclose(layer.weight.detach().numpy(), q, atol=1e-10)


def test_parametrization_inverse_time_limit():
    from cupyortho.errors import InverseMapError
    from scipy.stats import special_ortho_group
    from torch.nn.utils import parametrize

    n = 12
    layer = torch.nn.Linear(n, n, bias=False).double()
    p = ct.OrthogonalParametrization(n, init="identity", use_base=False, inverse_time_limit=1e-3)
    parametrize.register_parametrization(layer, "weight", p)
    with pytest.raises(InverseMapError, match="time_limit"):
        layer.weight = torch.as_tensor(special_ortho_group.rvs(n, random_state=0))
