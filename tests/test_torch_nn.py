"""torch layers and parametrizations with a base (W = B @ U(theta)): registration at any n by one QR,
exact assignment (det -1 included), Haar / identity / torus inits, rebase, checkpoints that reload
bitwise and refuse a differently built layer, the cached weight in recurrences, dtype-aware
assignment, and the adapter's edge and hostile inputs (issues 13, 14, 17)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cupyortho as co  # noqa: E402
import cupyortho.torch as ct  # noqa: E402
from cupyortho.errors import (  # noqa: E402
    AngleCountError,
    ArrayTypeError,
    BackendMismatchError,
    CupyorthoError,
    DtypeError,
    NonFiniteError,
    ScheduleError,
    SettingError,
    ShapeError,
    SizeError,
)
from torch.nn.utils import parametrize  # noqa: E402

F32, F64 = torch.float32, torch.float64


def eps(dtype):
    return torch.finfo(dtype).eps


def orth_err(q):
    q = q.detach().to(torch.complex128 if q.is_complex() else F64)
    return (q.mH @ q - torch.eye(q.shape[-1], dtype=q.dtype)).abs().max().item()


def ipr(u):
    """Mean over columns of sum_i U_ij^4 (the statistic of tests/test_init.py), one value per matrix."""
    return (np.asarray(u) ** 4).sum(axis=-2).mean(axis=-1)


# --------------------------------------------------------------------------- registration by one QR


@pytest.mark.parametrize("features", [(1024, 1024), (256, 1024), (1024, 256)])  # (in, out): weight (out, in)
def test_registration_on_large_linear_is_the_sign_fixed_qr(features):
    """nn.Linear(1024, 1024), a tall 1024 x 256 and a wide 256 x 1024 weight: registration keeps the
    sign-fixed QR factor Q of the weight (R = Q^T W upper triangular with a positive diagonal, to
    float32 rounding), with no solve."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(*features, bias=False)
    w0 = lin.weight.detach().clone()
    parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(*w0.shape))
    w = lin.weight.detach()
    assert w.shape == w0.shape and w.dtype == F32
    q, a = (w.mT, w0.mT) if w.shape[0] < w.shape[1] else (w, w0)
    assert orth_err(q) < 64 * eps(F32)
    r = q.double().mT @ a.double()
    scale = a.double().norm().item()
    assert torch.tril(r, -1).abs().max().item() < 64 * eps(F32) * scale
    assert torch.diagonal(r).min().item() > 0
    # the base holds it (n x n, in the state_dict), the angles are zero
    base = lin.parametrizations.weight[0].base
    assert base.shape == (max(features),) * 2 and base.dtype == F32
    assert "parametrizations.weight.0.base" in lin.state_dict()
    assert torch.count_nonzero(lin.parametrizations.weight.original) == 0


@pytest.mark.parametrize("dtype", [F32, F64])
def test_det_minus_one_and_orthogonal_targets_are_stored_exactly(dtype):
    from scipy.stats import ortho_group

    for shape in ((6, 6), (6, 3), (3, 6)):
        lin = torch.nn.Linear(shape[1], shape[0], bias=False, dtype=dtype)
        parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(*shape))
        big = max(shape)
        q = ortho_group.rvs(big, random_state=5)
        if np.linalg.det(q) > 0:
            q[:, 0] *= -1
        target = torch.as_tensor(q[:, : min(shape)], dtype=dtype)
        target = target.mT if shape[0] < shape[1] else target
        lin.weight = target
        assert torch.equal(lin.weight, target), shape
        if shape[0] == shape[1]:
            assert torch.linalg.det(lin.weight.double()).item() == pytest.approx(-1, abs=1e-5)
        # the frame's base is a completed n x n orthogonal matrix
        assert orth_err(lin.parametrizations.weight[0].base) < 64 * eps(dtype)


def test_non_orthogonal_assignment_is_its_qr_factor():
    p = ct.OrthogonalParametrization(5)
    lin = torch.nn.Linear(5, 5, bias=False, dtype=F64)
    parametrize.register_parametrization(lin, "weight", p, unsafe=False)
    a = torch.as_tensor(np.random.default_rng(1).normal(size=(5, 5)))
    lin.weight = a
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))
    torch.testing.assert_close(lin.weight, q, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- initializers


def second_moment_deviation(u):
    """S = mean over entries of |n E[U_ij^2] - 1|, E over the sample: every entry of a Haar matrix has
    E[U_ij^2] = 1/n, and n U_ij^2 is about chi-square(1), so S is about 0.8 sqrt(2/N) for N Haar
    samples (0.18 at N = 40); identity gives about 2."""
    u = np.asarray(u)
    return np.abs(u.shape[-1] * (u ** 2).mean(axis=0) - 1).mean()


def test_haar_init_passes_a_statistic_that_rejects_identity_and_uniform_angles():
    """At n = 64: our Haar init (layer and parametrization) passes the second-moment statistic S and a
    KS test of the columns' IPR against scipy's Haar sampler; the identity init and uniform angles
    (circle schedule) are rejected by S.  (Uniform angles through the default team schedule are
    already close to Haar at n = 64 by both statistics; the circle schedule is not.)"""
    from scipy.stats import ks_2samp, ortho_group

    n, N = 64, 40
    ref = ortho_group.rvs(n, size=N, random_state=1)
    torch.manual_seed(2)
    layers = np.stack([ct.Orthogonal(n, init="haar", dtype=F64).weight.detach().numpy() for _ in range(N)])
    params = []
    for _ in range(N // 2):
        lin = torch.nn.Linear(n, n, bias=False, dtype=F64)
        parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(n, init="haar"))
        params.append(lin.weight.detach().numpy())
    params = np.stack(params)
    assert second_moment_deviation(ref) < 0.3
    assert second_moment_deviation(layers) < 0.3
    assert second_moment_deviation(params) < 0.4  # N / 2 samples
    assert ks_2samp(ipr(layers), ipr(ref)).pvalue > 0.01
    assert ks_2samp(ipr(params), ipr(ref)).pvalue > 0.01
    ident = np.stack([ct.Orthogonal(n, dtype=F64).weight.detach().numpy() for _ in range(2)])
    assert second_moment_deviation(ident) > 1.5
    uniform = co.matrix(np.random.default_rng(0).uniform(-np.pi, np.pi, (N, co.num_angles(n))), schedule="circle")
    assert second_moment_deviation(uniform) > 0.6
    # every Haar layer is orthogonal; det takes both signs (B is Haar on O(n))
    dets = np.linalg.det(layers)
    assert np.allclose(np.abs(dets), 1) and (dets > 0).any() and (dets < 0).any()


def test_haar_matrix_at_large_n_is_cheap_and_orthogonal():
    for f, tol in ((co.haar_matrix, 1e-12), (co.haar_unitary_matrix, 1e-12)):
        u = f(300, rng=0)
        assert np.abs(u.conj().T @ u - np.eye(300)).max() < tol
    assert np.linalg.det(co.haar_matrix(300, rng=1)) == pytest.approx(1.0, abs=1e-8)


def test_torus_angles_law_and_schedule_independence():
    from scipy.stats import kstest
    from cupyortho.init import torus_angles

    n = 7
    theta = torus_angles(n, rng=0, shape=400)
    idx = co.pair_index(np.arange(0, n - 1, 2), np.arange(1, n, 2), n)
    others = np.setdiff1d(np.arange(co.num_angles(n)), idx)
    assert np.all(theta[:, others] == 0)
    assert kstest(theta[:, idx].ravel(), "uniform", args=(-np.pi, 2 * np.pi)).pvalue > 0.01
    u = co.matrix(theta[0], schedule="team")
    np.testing.assert_array_equal(u, co.matrix(theta[0], schedule="circle"))
    for k, a in enumerate(theta[0, idx]):
        block = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        np.testing.assert_allclose(u[2 * k:2 * k + 2, 2 * k:2 * k + 2], block, atol=1e-15)
    assert u[-1, -1] == 1.0
    # frames: the first m columns of the block matrix
    tf = torus_angles(n, 3, rng=3)
    full = np.zeros(co.num_angles(n))
    full[: tf.size] = tf
    np.testing.assert_allclose(co.frame(tf, n, 3), co.matrix(full)[:, :3], atol=1e-15)
    with pytest.raises(SettingError, match="high"):
        torus_angles(4, low=1.0, high=0.0)
    with pytest.raises(SettingError, match="low"):
        torus_angles(4, low=float("nan"))


def test_torus_init_layer_and_parametrization():
    torch.manual_seed(0)
    layer = ct.Orthogonal(6, init="torus", dtype=F64)
    w = layer.weight.detach()
    mask = torch.block_diag(*[torch.ones(2, 2)] * 3).bool()
    assert torch.all(w[~mask] == 0) and not torch.all(layer.theta == 0)
    lin = torch.nn.Linear(6, 6, bias=False, dtype=F64)
    parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(6, init="torus"))
    assert torch.all(lin.weight.detach()[~mask] == 0)
    assert orth_err(lin.weight) < 1e-14
    framed = ct.Orthogonal(6, 3, init="torus", use_base=False)
    assert framed.weight.shape == (3, 6) and orth_err(framed.weight.mT) < 1e-6


# --------------------------------------------------------------------------- rebase


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("m", [None, 5])
def test_rebase_leaves_the_weight_unchanged(dtype, m):
    n = 12
    torch.manual_seed(1)
    layer = ct.Orthogonal(n, m, init="haar", dtype=dtype)
    with torch.no_grad():
        layer.theta.normal_(0, 0.5)
    w = layer.weight.detach().clone()
    layer.rebase()
    assert torch.count_nonzero(layer.theta) == 0
    assert (layer.weight.detach() - w).abs().max().item() <= 10 * n * eps(dtype)
    assert orth_err(layer.base) <= ct.assignment_tolerance(dtype)


def test_rebase_reorthogonalizes_a_drifted_base_and_whole_models():
    n = 8
    layer = ct.Orthogonal(n, dtype=F64)
    with torch.no_grad():
        layer.base.add_(1e-9 * torch.randn(n, n, dtype=F64))  # drift far above the tolerance
    layer.rebase()
    assert orth_err(layer.base) < 1e-14
    # the model-level helper finds layers and parametrizations and clears their optimizer state
    model = torch.nn.Sequential(ct.Orthogonal(n, dtype=F64), torch.nn.Linear(n, n, bias=False, dtype=F64),
                                ct.Unitary(3, dtype=F64))
    parametrize.register_parametrization(model[1], "weight", ct.OrthogonalParametrization(n, init="haar"))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.randn(4, n, dtype=F64)
    (model[1](model[0](x)).sum() + model[2](torch.randn(2, 3, dtype=F64)).abs().sum()).backward()
    opt.step()
    before = (model[0].weight.detach().clone(), model[1].weight.detach().clone(), model[2].weight.detach().clone())
    assert ct.rebase(model, opt) == 3
    assert len(opt.state) == 0
    for w, b in zip((model[0].weight, model[1].weight, model[2].weight), before):
        assert (w.detach() - b).abs().max().item() <= 10 * n * eps(F64)
    with pytest.raises(ShapeError, match="use_base=False"):
        ct.Orthogonal(4, use_base=False).rebase()


def test_procrustes_n128_converges_with_periodic_rebase():
    """Gradient descent on the angles around the base, rebased every 5 steps (dynamic trivialization),
    reaches a Haar target of SO(128) to 1e-6 in 20 steps; the pure-angle chart does not."""
    from scipy.stats import special_ortho_group

    n = 128
    target = torch.as_tensor(special_ortho_group.rvs(n, random_state=0))
    g = torch.Generator().manual_seed(0)
    x = torch.linalg.qr(torch.randn(2 * n, n, dtype=F64, generator=g))[0] * (2 * n) ** 0.5  # x^T x / N = I
    y = x @ target.mT
    errors = {}
    for every in (5, None):
        layer = ct.Orthogonal(n, dtype=F64)
        opt = torch.optim.SGD(layer.parameters(), lr=0.2)
        for step in range(20):
            opt.zero_grad()
            (((layer(x) - y) ** 2).sum() / x.shape[0]).backward()
            opt.step()
            if every and (step + 1) % every == 0:
                ct.rebase(layer, opt)
        errors[every] = (layer.weight.detach() - target).abs().max().item()
    assert errors[5] < 1e-6, errors
    assert errors[None] > 1e-2, errors


# --------------------------------------------------------------------------- checkpoints


def test_layer_and_parametrized_checkpoints_reload_bitwise(tmp_path):
    torch.manual_seed(0)
    layer = ct.Orthogonal(7, init="haar")
    with torch.no_grad():
        layer.theta.normal_(0, 0.3)
    torch.save(layer.state_dict(), tmp_path / "layer.pt")
    other = ct.Orthogonal(7)
    other.load_state_dict(torch.load(tmp_path / "layer.pt"))
    assert torch.equal(other.weight, layer.weight)

    def make(seed):
        torch.manual_seed(seed)
        lin = torch.nn.Linear(6, 4, bias=False)
        parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(4, 6))
        return lin

    lin = make(0)
    with torch.no_grad():
        lin.parametrizations.weight.original.normal_(0, 0.2)
    torch.save(lin.state_dict(), tmp_path / "lin.pt")
    fresh = make(1)
    assert not torch.equal(fresh.weight, lin.weight)
    fresh.load_state_dict(torch.load(tmp_path / "lin.pt"))
    assert torch.equal(fresh.weight, lin.weight)


def test_loading_a_differently_built_layer_names_the_mismatch():
    sd = ct.Orthogonal(6, schedule="circle").state_dict()
    with pytest.raises(ScheduleError, match="schedule kind = 'circle'"):
        ct.Orthogonal(6, schedule="team").load_state_dict(sd)
    with pytest.raises(ScheduleError, match="team size"):
        ct.Orthogonal(8, schedule=co.team_schedule(8, 2)).load_state_dict(
            ct.Orthogonal(8, schedule=co.team_schedule(8, 4)).state_dict())
    with pytest.raises(SizeError, match="n = 6"):
        ct.Orthogonal(5, schedule="circle").load_state_dict(sd)
    with pytest.raises(SizeError, match="m = 2"):
        ct.Orthogonal(6, 3, schedule="circle").load_state_dict(ct.Orthogonal(6, 2, schedule="circle").state_dict())
    # a pre-base checkpoint (pure angles, no definition) and a base checkpoint without a layer base
    with pytest.raises(ShapeError, match=r"no 'base'.*\(6, 6\)"):
        ct.Orthogonal(6).load_state_dict({"theta": torch.zeros(15)})
    with pytest.raises(ShapeError, match=r"'theta' has shape \(10,\).*\(15,\)"):
        ct.Orthogonal(6).load_state_dict({"theta": torch.zeros(10), "base": torch.eye(6)})
    with pytest.raises(ShapeError, match=r"'base' has shape \(5, 5\).*\(6, 6\)"):
        ct.Orthogonal(6).load_state_dict({"theta": torch.zeros(15), "base": torch.eye(5)})
    with pytest.raises(SizeError, match="use_base"):
        ct.Orthogonal(6, use_base=False, schedule="circle").load_state_dict(sd)
    old = ct.Orthogonal(6, use_base=False)
    old.load_state_dict({"theta": torch.ones(15)})  # pure-angle checkpoints load with use_base=False
    assert torch.equal(old.theta, torch.ones(15))
    # the default schedule is resolved: a checkpoint of schedule=None loads into the explicit default
    ct.Orthogonal(6, schedule="team").load_state_dict(ct.Orthogonal(6).state_dict())
    # a parametrization's base of the wrong n
    lin = torch.nn.Linear(5, 5, bias=False)
    parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(5))
    big = torch.nn.Linear(6, 6, bias=False)
    parametrize.register_parametrization(big, "weight", ct.OrthogonalParametrization(6))
    with pytest.raises(CupyorthoError, match="parametrizations.weight.0"):
        lin.load_state_dict(big.state_dict())
    # a pure-angle (pre-base) parametrized checkpoint names the missing key and its shape
    old_lin = torch.nn.Linear(5, 5, bias=False)
    parametrize.register_parametrization(old_lin, "weight", ct.OrthogonalParametrization(5, use_base=False,
                                                                                        init="identity"))
    sd = {k: v for k, v in old_lin.state_dict().items() if not k.endswith("_extra_state")}
    with pytest.raises(ShapeError, match=r"'parametrizations.weight.0.base'.*\(5, 5\)"):
        lin.load_state_dict(sd)


def test_torch_compile_and_state_dict_with_the_base(tmp_path):
    torch.manual_seed(0)
    layer = ct.Orthogonal(5, init="haar", dtype=F64)
    with torch.no_grad():
        layer.theta.normal_()
    x = torch.randn(3, 5, dtype=F64)

    def loss(mod, a):
        return (mod(a) ** 2 * torch.arange(5.0, dtype=a.dtype)).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    results = []
    for f in (loss, compiled):
        layer.theta.grad = None
        value = f(layer, x)
        value.backward()
        results.append((value.detach(), layer.theta.grad.clone()))
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-12)
    torch.save(layer.state_dict(), tmp_path / "c.pt")
    other = ct.Orthogonal(5, dtype=F64)
    other.load_state_dict(torch.load(tmp_path / "c.pt"))
    assert torch.equal(compiled(other, x), compiled(layer, x))


# --------------------------------------------------------------------------- layers with a base


@pytest.mark.parametrize("rows", [2, 9])
def test_layer_with_base_matches_its_weight_and_gradients(rows):
    torch.manual_seed(0)
    n = 6
    layer = ct.Orthogonal(n, init="haar", dtype=F64)
    with torch.no_grad():
        layer.theta.normal_()
    x = torch.randn(rows, n, dtype=F64)
    w = layer.weight
    torch.testing.assert_close(layer(x), x @ w.mT, rtol=0, atol=1e-13)
    torch.testing.assert_close(w, layer.base @ ct.matrix(layer.theta), rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda t: torch.func.functional_call(layer, {"theta": t}, (x,)),
                                    (layer.theta.detach().clone().requires_grad_(),))
    frame = ct.Orthogonal(n, 2, init="haar", dtype=F64)
    torch.testing.assert_close(frame(x), x @ frame.weight.mT, rtol=0, atol=1e-13)
    torch.testing.assert_close(frame.weight.mT, frame.base @ ct.frame(frame.theta, n, 2), rtol=0, atol=0)


def test_functional_base_argument():
    torch.manual_seed(0)
    theta = torch.randn(10, dtype=F64)
    b = torch.linalg.qr(torch.randn(5, 5, dtype=F64))[0]
    torch.testing.assert_close(ct.matrix(theta, base=b), b @ ct.matrix(theta), rtol=0, atol=0)
    torch.testing.assert_close(ct.frame(theta[:7], 5, 2, base=b), b @ ct.frame(theta[:7], 5, 2), rtol=0, atol=0)
    p = torch.randn(9, dtype=F64)
    bc = torch.eye(3, dtype=torch.complex128)
    torch.testing.assert_close(ct.unitary(p, base=bc), ct.unitary(p), rtol=0, atol=0)
    with pytest.raises(ShapeError, match="base"):
        ct.matrix(theta, base=torch.eye(4, dtype=F64))
    with pytest.raises(DtypeError, match="base"):
        ct.matrix(theta, base=b.float())
    with pytest.raises(DtypeError, match="base"):
        ct.unitary(p, base=b[:3, :3])


def test_unitary_layer_and_parametrization():
    torch.manual_seed(0)
    n = 4
    for special in (False, True):
        layer = ct.Unitary(n, special=special, init="haar", dtype=F64)
        with torch.no_grad():
            layer.theta.normal_(0, 0.5)
        w = layer.weight.detach()
        assert w.dtype == torch.complex128 and orth_err(w) < 1e-13
        if special:
            assert torch.linalg.det(w).item() == pytest.approx(1.0, abs=1e-12)
        for rows in (2, 7):
            x = torch.randn(rows, n, dtype=F64)
            torch.testing.assert_close(layer(x), x.to(w.dtype) @ w.mT, rtol=0, atol=1e-13)
        layer(torch.randn(2, n, dtype=F64)).abs().sum().backward()
        assert layer.theta.grad is not None and torch.isfinite(layer.theta.grad).all()
        layer.rebase()
        assert (layer.weight.detach() - w).abs().max().item() < 10 * n * eps(F64)
    # the parametrization stores a unitary exactly; SU(n) fixes the phase of det with a warning
    lin = torch.nn.Linear(n, n, bias=False, dtype=torch.complex128)
    parametrize.register_parametrization(lin, "weight", ct.UnitaryParametrization(n))
    target = torch.as_tensor(co.haar_unitary_matrix(n, rng=4))
    lin.weight = target
    assert torch.equal(lin.weight, target)
    lin2 = torch.nn.Linear(n, n, bias=False, dtype=torch.complex128)
    parametrize.register_parametrization(lin2, "weight", ct.UnitaryParametrization(n, special=True, init="haar"))
    assert torch.linalg.det(lin2.weight).item() == pytest.approx(1.0, abs=1e-12)
    with pytest.warns(UserWarning, match="det != 1"):
        lin2.weight = target
    assert torch.linalg.det(lin2.weight).item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(lin2.weight, target * torch.linalg.det(target) ** (-1 / n), rtol=0, atol=1e-13)


# --------------------------------------------------------------------------- recurrences: one weight per forward


def _counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("context", ["cupyortho", "parametrize"])
def test_cached_layer_builds_the_matrix_once_per_forward(monkeypatch, context):
    import cupyortho.torch.nn as ctnn

    n, steps, batch = 8, 12, 3  # batch < n: uncached, each step would rotate the state (apply)
    torch.manual_seed(0)
    cell = ct.Orthogonal(n, init="haar", dtype=F64)
    with torch.no_grad():
        cell.theta.normal_()
    h0 = torch.randn(batch, n, dtype=F64)

    def run():
        h = h0
        for _ in range(steps):
            h = torch.tanh(cell(h))
        return h.sum()

    cell.theta.grad = None
    run().backward()
    ref = cell.theta.grad.clone()
    matrices = _counting(monkeypatch, ctnn, "matrix")
    applies = _counting(monkeypatch, ctnn, "apply")
    cell.theta.grad = None
    ctx = ct.cached() if context == "cupyortho" else parametrize.cached()
    with ctx:
        loss = run()
    loss.backward()
    assert len(matrices) == 1 and len(applies) == 0
    torch.testing.assert_close(cell.theta.grad, ref, rtol=1e-10, atol=1e-12)
    assert ctnn._cache == {}
    # outside the context the rotations are applied at every step
    run()
    assert len(applies) == steps


def test_parametrization_under_parametrize_cached_is_computed_once(monkeypatch):
    import cupyortho.torch.nn as ctnn

    lin = torch.nn.Linear(6, 6, bias=False, dtype=F64)
    parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(6, init="haar"))
    calls = _counting(monkeypatch, ctnn, "matrix")
    h = torch.randn(2, 6, dtype=F64)
    with parametrize.cached():
        for _ in range(10):
            h = torch.tanh(lin(h))
    h.sum().backward()
    assert len(calls) == 1


# --------------------------------------------------------------------------- dtype-aware assignment


def test_assignment_tolerance_follows_the_dtype():
    assert ct.assignment_tolerance(F32) == 256 * eps(F32)
    assert ct.assignment_tolerance(F64) == 256 * eps(F64)
    assert ct.assignment_tolerance(torch.complex64) == 256 * eps(F32)
    # a float32 orthogonal matrix with max|W^T W - I| of about 1.9e-6 (16 eps) is stored bitwise
    from scipy.stats import special_ortho_group

    n = 32
    w = torch.as_tensor(special_ortho_group.rvs(n, random_state=0), dtype=F32) * (1 + 1e-6)
    assert 10 * eps(F32) < orth_err(w) < ct.assignment_tolerance(F32)
    lin = torch.nn.Linear(n, n, bias=False)
    parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(n))
    lin.weight = w
    assert torch.equal(lin.weight, w)
    # the pure-angle parametrization accepts it too (re-orthogonalized, then solved)
    small = torch.nn.Linear(6, 6, bias=False)
    parametrize.register_parametrization(small, "weight", ct.OrthogonalParametrization(6, use_base=False,
                                                                                       init="identity"))
    w6 = torch.as_tensor(special_ortho_group.rvs(6, random_state=1), dtype=F32)
    w6 = w6 * (1 + 1e-6)
    assert orth_err(w6) > 10 * eps(F32)
    small.weight = w6
    assert (small.weight - w6).abs().max().item() < 2e-5


def test_round_trip_of_the_librarys_own_float32_weights():
    torch.manual_seed(0)
    for n in (64, 300):
        layer = ct.Orthogonal(n, init="haar")
        with torch.no_grad():
            layer.theta.normal_(0, 0.1)
        w = layer.weight.detach()
        lin = torch.nn.Linear(n, n, bias=False)
        parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(n))
        lin.weight = w
        assert torch.equal(lin.weight, w), n


# --------------------------------------------------------------------------- edge and hostile input (issue 14)


def test_none_and_bad_tensors_raise_cupyortho_errors():
    for bad, error in ((None, ArrayTypeError), (np.zeros(6), ArrayTypeError),
                       (torch.zeros(6, dtype=torch.int64), DtypeError), (torch.zeros(6).to_sparse(), DtypeError)):
        with pytest.raises(error, match="theta"):
            ct.matrix(bad)
        with pytest.raises(error, match="theta"):
            ct.apply(bad, torch.zeros(4, 2))
    with pytest.raises(ArrayTypeError, match="x"):
        ct.apply(torch.zeros(6), None)
    with pytest.raises(ArrayTypeError, match="params"):
        ct.unitary(None)
    with pytest.raises(SettingError, match="special"):
        ct.unitary(torch.zeros(9), special="yes")
    with pytest.raises(ArrayTypeError, match="input"):
        ct.Orthogonal(4)(None)
    with pytest.raises(SettingError, match="init"):
        ct.Orthogonal(4, init="uniform")
    with pytest.raises(SettingError, match="init"):
        ct.OrthogonalParametrization(4, init=3)
    with pytest.raises(DtypeError, match="right_inverse"):
        ct.OrthogonalParametrization(3).right_inverse(None)
    with pytest.raises(NonFiniteError, match="right_inverse"):
        ct.OrthogonalParametrization(3).right_inverse(torch.full((3, 3), float("nan")))
    for bad in (lambda: ct.Unitary(4, special="x"), lambda: ct.Orthogonal(4, use_base="no")):
        with pytest.raises(SettingError):
            bad()
    with pytest.raises(ShapeError, match="_extra_state"):
        ct.Orthogonal(3).load_state_dict({"theta": torch.zeros(3), "base": torch.eye(3), "_extra_state": "junk"})


def test_meta_angles_with_cpu_data_are_refused():
    theta = torch.zeros(6, device="meta")
    with pytest.raises(BackendMismatchError, match="theta.*meta.*x.*cpu"):
        ct.apply(theta, torch.zeros(4, 2))
    with pytest.raises(BackendMismatchError):
        ct.unitary_apply(torch.zeros(16, device="meta"), torch.zeros(4, 2))
    layer = ct.Orthogonal(4, device="meta")
    with pytest.raises(BackendMismatchError, match="input"):
        layer(torch.zeros(2, 4))
    # meta everywhere is shape inference
    assert ct.apply(theta, torch.zeros(4, 2, device="meta")).shape == (4, 2)


def test_ops_honour_a_stiefel_restricted_schedule():
    n, m = 5, 2
    for s in (co.circle_schedule(n).restrict(m), co.team_schedule(n, 2).restrict(m)):
        with pytest.raises(AngleCountError, match="m = 2"):
            ct.matrix(torch.zeros(10, dtype=F64), schedule=s)
        with pytest.raises(AngleCountError, match="m = 2"):
            ct.apply(torch.zeros(10, dtype=F64), torch.zeros(n, 3, dtype=F64), schedule=s)
        th = np.random.default_rng(0).normal(size=co.num_angles(n, m))
        np.testing.assert_allclose(ct.matrix(torch.as_tensor(th), schedule=s).numpy(), co.matrix(th, schedule=s),
                                   rtol=0, atol=1e-14)
        x = np.random.default_rng(1).normal(size=(n, 3))
        np.testing.assert_allclose(ct.apply(torch.as_tensor(th), torch.as_tensor(x), schedule=s).numpy(),
                                   co.apply(th, x, schedule=s), rtol=0, atol=1e-14)


def test_empty_batches_work_in_every_op():
    n = 5
    A = co.num_angles(n)
    theta = torch.zeros(0, A, dtype=F64, requires_grad=True)
    u = ct.matrix(theta)
    assert u.shape == (0, n, n)
    u.sum().backward()
    assert theta.grad.shape == (0, A)
    assert ct.frame(torch.zeros(0, co.num_angles(n, 2), dtype=F64), n, 2).shape == (0, n, 2)
    t1 = torch.randn(A, dtype=F64, requires_grad=True)
    x0 = torch.zeros(n, 0, dtype=F64, requires_grad=True)  # k = 0 columns
    y = ct.apply(t1, x0)
    assert y.shape == (n, 0)
    y.sum().backward()
    assert torch.equal(t1.grad, torch.zeros(A, dtype=F64))
    xb = torch.zeros(0, n, 3, dtype=F64)
    assert ct.apply(t1, xb).shape == (0, n, 3)
    p = torch.zeros(0, n * n, dtype=F64, requires_grad=True)
    ct.unitary(p).abs().sum().backward()
    assert p.grad.shape == (0, n * n)
    assert ct.unitary_apply(torch.zeros(n * n, dtype=F64), torch.zeros(0, n, 2, dtype=F64)).shape == (0, n, 2)
    layer = ct.Orthogonal(n, dtype=F64)
    assert layer(torch.zeros(0, n, dtype=F64)).shape == (0, n)


@pytest.mark.parametrize("schedule", ["circle", "team", "brick"])
def test_zero_parameters_give_the_identity_of_every_schedule_with_the_exact_gradient(schedule):
    """The forward ops return the identity at all-zero parameters without running the rounds (CPU);
    that equals cupyortho's own result and the gradient there is the reference VJP."""
    n, m = 6, 2
    g = np.random.default_rng(0).normal(size=(2, n, n))
    theta = torch.zeros(2, co.num_angles(n), dtype=F64, requires_grad=True)
    u = ct.matrix(theta, schedule=schedule)
    np.testing.assert_array_equal(u.detach().numpy(), co.matrix(np.zeros((2, co.num_angles(n))), schedule=schedule))
    (u * torch.as_tensor(g)).sum().backward()
    np.testing.assert_allclose(theta.grad.numpy(), co.matrix_vjp(np.zeros((2, co.num_angles(n))), g,
                                                                 schedule=schedule), atol=1e-14)
    tf = torch.zeros(co.num_angles(n, m), dtype=F64)
    np.testing.assert_array_equal(ct.frame(tf, n, m, schedule=schedule).numpy(), np.eye(n, m))
    p = torch.zeros(n * n, dtype=F64)
    np.testing.assert_array_equal(ct.unitary(p, schedule=schedule).numpy(), np.eye(n))
    torch.library.opcheck(ct.OPS["matrix"], (theta, n, schedule, None))
