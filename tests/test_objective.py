"""The LatentCLR objective against plain float64 loops of the formula."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lclr.errors import ConfigError, LclrError
from lclr_contrastive import plugin as contrastive_plugin
from lclr_contrastive.objective import (
    FeatureChangeError,
    LatentCLR,
    LatentCLROptions,
    latentclr_loss,
)

# The reference: python loops, math.exp / math.log, float64 ------------


def _cos(a, b):
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(math.fsum(x * x for x in a))
    nb = math.sqrt(math.fsum(y * y for y in b))
    return dot / (na * nb)


def reference_loss(
    changes, tau, *, abs_sim=False, multiply=False, mean=False, zero_ok=False
):
    """The paper's formula (or the authors' variant) by quadruple loops.

    ``changes`` is a (K, N, F) tensor; its values are read as float64.
    With ``zero_ok``, a zero row has similarity 0 to every row.
    """
    f = changes.to(torch.float64).tolist()
    k_dirs, n = len(f), len(f[0])

    def logit(i, k, j, k2):
        a, b = f[k][i], f[k2][j]
        zero = zero_ok and (not any(a) or not any(b))
        s = 0.0 if zero else _cos(a, b)
        if abs_sim:
            s = abs(s)
        return s * tau if multiply else s / tau

    total = 0.0
    for k in range(k_dirs):
        for i in range(n):
            pos = [math.exp(logit(i, k, j, k)) for j in range(n) if j != i]
            neg = [
                math.exp(logit(i, k, j, k2))
                for j in range(n)
                for k2 in range(k_dirs)
                if k2 != k
            ]
            p, q = math.fsum(pos), math.fsum(neg)
            if mean:
                p, q = p / len(pos), q / len(neg)
            total += -math.log(p / q)
    return total / (k_dirs * n)


def make_changes(k, n, f, seed, spread=0.5, dtype=torch.float32):
    """Feature changes clustered by direction (noise of size ``spread``)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, 1, f, generator=g)
    x = centres + spread * torch.randn(k, n, f, generator=g)
    return x.to(dtype)


def objective(**options):
    return LatentCLR(LatentCLROptions(**options))


SHAPES = [(2, 2, 3), (3, 4, 5), (5, 3, 17), (4, 8, 64)]
TEMPERATURES = [1.0, 0.5, 0.1, 0.05]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


# Against the loops ----------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_paper_loss_matches_loops(shape, tau, dtype):
    for seed, spread in [(1, 0.3), (2, 3.0)]:
        x = make_changes(*shape, seed=seed, spread=spread, dtype=dtype)
        loss, metrics = objective(temperature=tau)(x)
        assert torch.isfinite(loss)
        assert loss.dtype == (
            torch.float64 if dtype == torch.float64 else torch.float32
        )
        want = reference_loss(x, tau)
        # the same (half) values in, float32 inside: error ~ 1e-7 / tau
        assert loss.item() == pytest.approx(want, rel=1e-5, abs=2e-5 / tau)
        assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tau", [2.0, 0.5, 0.05])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
def test_authors_loss_matches_loops(shape, tau, dtype):
    x = make_changes(*shape, seed=3, spread=1.0, dtype=dtype)
    # each direction's changes point both ways, as with a signed alpha range
    x[:, ::2] = -x[:, ::2]
    loss, _ = objective(temperature=tau, variant="authors")(x)
    want = reference_loss(x, tau, abs_sim=True, multiply=True, mean=True)
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize(
    "field, value, flags",
    [
        ("similarity", "abs_cosine", {"abs_sim": True}),
        ("temperature_mode", "multiply", {"multiply": True}),
        ("reduction", "mean", {"mean": True}),
    ],
)
def test_each_authors_option_alone(field, value, flags):
    x = make_changes(3, 4, 6, seed=4, spread=1.5)
    loss, _ = objective(temperature=0.2, **{field: value})(x)
    assert loss.item() == pytest.approx(reference_loss(x, 0.2, **flags), rel=1e-5)


def test_authors_projector_end_to_end():
    """h'/|h'| - h/|h| by loops, then the authors' loss by loops."""
    k, n, f = 3, 4, 10
    g = torch.Generator().manual_seed(5)
    base = torch.randn(n, f, generator=g) * 4 + 2
    edited = base + 0.7 * torch.randn(k, n, f, generator=g)
    obj = objective(variant="authors", temperature=0.5)
    h0 = obj.transform_features(base)  # (N, F)
    h1 = obj.transform_features(edited.reshape(k * n, f)).reshape(k, n, f)
    loss, _ = obj(h1 - h0)

    def unit(row):
        norm = math.sqrt(math.fsum(v * v for v in row))
        return [v / norm for v in row]

    b = [unit(row) for row in base.double().tolist()]
    e = [[unit(row) for row in rows] for rows in edited.double().tolist()]
    ref = [
        [[e[kk][i][c] - b[i][c] for c in range(f)] for i in range(n)] for kk in range(k)
    ]
    ref = torch.tensor(ref, dtype=torch.float64)
    assert torch.allclose(h1 - h0, ref.float(), atol=1e-6)
    # the loss of these float32 changes, and of the float64 ones (the
    # differences of unit rows cancel, hence the absolute tolerance)
    same = reference_loss(h1 - h0, 0.5, abs_sim=True, multiply=True, mean=True)
    assert loss.item() == pytest.approx(same, rel=1e-5)
    want = reference_loss(ref, 0.5, abs_sim=True, multiply=True, mean=True)
    assert loss.item() == pytest.approx(want, abs=1e-6)


def test_variant_presets_and_overrides():
    paper = LatentCLROptions()
    assert (paper.similarity, paper.temperature_mode) == ("cosine", "divide")
    assert (paper.reduction, paper.projector) == ("sum", "none")
    assert paper.temperature == 0.5
    authors = LatentCLROptions(variant="authors")
    assert (authors.similarity, authors.temperature_mode) == ("abs_cosine", "multiply")
    assert (authors.reduction, authors.projector) == ("mean", "normalize")
    mixed = LatentCLROptions(variant="authors", reduction="sum", projector="none")
    assert (mixed.similarity, mixed.reduction, mixed.projector) == (
        "abs_cosine",
        "sum",
        "none",
    )
    # the resolved options rebuild the same options
    import attrs

    assert LatentCLROptions(**attrs.asdict(mixed)) == mixed


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": 0.0},
        {"temperature": -0.5},
        {"temperature": float("nan")},
        {"temperature": "warm"},
        {"projector_batchnorm": "no"},
        {"variant": "mine"},
        {"similarity": "dot"},
        {"reduction": "max"},
        {"projector": "linear"},
        {"zero_change": "skip"},
        {"projector_depth": 0},
    ],
)
def test_bad_options_raise(bad):
    with pytest.raises(ValueError):
        LatentCLROptions(**bad)


# Numerics -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_finite_loss_and_gradient(dtype):
    for tau in [0.05, 0.01]:
        # identical changes per direction: logits at 1/tau, exp would overflow
        x = make_changes(6, 5, 32, seed=6, spread=0.0, dtype=dtype)
        x.requires_grad_(True)
        loss, metrics = objective(temperature=tau)(x)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(x.grad).all()
        assert x.grad.dtype == dtype
        assert metrics["acc"] == 1.0


def test_extreme_magnitudes():
    x = make_changes(3, 4, 8, seed=7, spread=1.0)
    want = objective()(x)[0].item()
    for scale in [1e-30, 1e-6, 1e6, 1e30]:
        assert objective()(x * scale)[0].item() == pytest.approx(want, rel=1e-5)
    big = (x * 1e4).half()  # near the float16 maximum, squares overflow it
    assert objective()(big)[0].item() == pytest.approx(want, rel=1e-2)
    tiny = (x * 1e-6).half()  # subnormal float16 values
    assert math.isfinite(objective()(tiny)[0].item())


def test_gradient_matches_float64():
    x = make_changes(3, 4, 6, seed=8, spread=1.0, dtype=torch.float64)
    x.requires_grad_(True)
    objective(temperature=0.1)(x)[0].backward()
    x32 = x.detach().float().requires_grad_(True)
    objective(temperature=0.1)(x32)[0].backward()
    assert torch.allclose(x32.grad.double(), x.grad, atol=1e-5)
    assert torch.autograd.gradcheck(
        lambda t: latentclr_loss(t, temperature=0.3)[0], (x.detach().requires_grad_(),)
    )


# Properties -----------------------------------------------------------

shapes = st.tuples(
    st.integers(2, 5), st.integers(2, 6), st.integers(1, 8), st.integers(0, 2**31)
)
variants = st.sampled_from(["paper", "authors"])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, variant=variants)
def test_invariant_to_positive_row_scaling(shape, variant):
    k, n, f, seed = shape
    x = make_changes(k, n, f, seed=seed, spread=1.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    scales = torch.exp(
        torch.empty(k, n, 1, dtype=torch.float64).uniform_(-7, 7, generator=g)
    )
    obj = objective(variant=variant, temperature=0.2)
    assert obj(x * scales)[0].item() == pytest.approx(obj(x)[0].item(), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, variant=variants)
def test_invariant_to_permutations(shape, variant):
    k, n, f, seed = shape
    x = make_changes(k, n, f, seed=seed, spread=1.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 2)
    samples = torch.randperm(n, generator=g)
    dirs = torch.randperm(k, generator=g)
    obj = objective(variant=variant, temperature=0.3)
    want = obj(x)[0].item()
    assert obj(x[:, samples])[0].item() == pytest.approx(want, rel=1e-9)
    assert obj(x[dirs])[0].item() == pytest.approx(want, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, tau=st.floats(0.05, 5.0), spread=st.floats(0.0, 3.0))
def test_loss_bounds_and_mean_shift(shape, tau, spread):
    k, n, f, seed = shape
    x = make_changes(k, n, f, seed=seed, spread=spread, dtype=torch.float64)
    loss = objective(temperature=tau)(x)[0].item()
    shift = math.log((k - 1) * n / (n - 1))
    # each log term is within log(count) +- 1/tau
    assert shift - 2 / tau - 1e-9 <= loss <= shift + 2 / tau + 1e-9
    mean = objective(temperature=tau, reduction="mean")(x)[0].item()
    assert mean == pytest.approx(loss - shift, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(shape=shapes)
def test_abs_cosine_ignores_signs(shape):
    k, n, f, seed = shape
    x = make_changes(k, n, f, seed=seed, spread=1.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 3)
    signs = torch.randint(0, 2, (k, n, 1), generator=g) * 2 - 1
    obj = objective(similarity="abs_cosine", temperature=0.3)
    assert obj(x * signs)[0].item() == pytest.approx(obj(x)[0].item(), rel=1e-9)


# Metrics --------------------------------------------------------------


def test_metrics_definitions():
    x = make_changes(4, 5, 12, seed=9, spread=2.0, dtype=torch.float64)
    loss, metrics = objective(temperature=0.5)(x)
    assert set(metrics) == {"acc", "ratio_acc", "pos_sim", "neg_sim"}
    k, n, _ = x.shape
    rows = [(kk, i) for kk in range(k) for i in range(n)]
    f = x.tolist()
    hits, pos, neg = 0, [], []
    for a in rows:
        best, best_dir = -2.0, None
        for b in rows:
            if a == b:
                continue
            s = _cos(f[a[0]][a[1]], f[b[0]][b[1]])
            (pos if a[0] == b[0] else neg).append(s)
            if s > best:
                best, best_dir = s, b[0]
        hits += best_dir == a[0]
    assert metrics["acc"] == pytest.approx(hits / len(rows))
    assert metrics["pos_sim"] == pytest.approx(sum(pos) / len(pos))
    assert metrics["neg_sim"] == pytest.approx(sum(neg) / len(neg))
    assert 0.0 <= metrics["ratio_acc"] <= 1.0
    clustered = make_changes(4, 5, 12, seed=9, spread=0.01)
    metrics = objective()(clustered)[1]
    assert metrics["acc"] == 1.0 and metrics["ratio_acc"] == 1.0


# Errors ---------------------------------------------------------------


def test_too_few_directions_or_samples():
    with pytest.raises(ConfigError, match="K >= 2"):
        objective()(torch.randn(1, 4, 3))
    with pytest.raises(ConfigError, match="N >= 2"):
        objective()(torch.randn(3, 1, 3))
    with pytest.raises(ValueError):
        objective()(torch.randn(3, 4))


def test_zero_change_raises_clearly():
    x = make_changes(3, 4, 5, seed=10)
    x[2, 1] = 0
    with pytest.raises(FeatureChangeError, match="direction 2 left sample 1") as info:
        objective()(x)
    assert isinstance(info.value, LclrError)
    assert isinstance(info.value, ValueError)


def test_zero_change_guarded():
    x = make_changes(3, 4, 5, seed=10, dtype=torch.float64)
    x[2, 1] = 0
    x.requires_grad_(True)
    loss, metrics = objective(zero_change="guard", temperature=0.1)(x)
    loss.backward()
    assert loss.item() == pytest.approx(reference_loss(x.detach(), 0.1, zero_ok=True))
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[2, 1] == 0)
    assert all(math.isfinite(v) for v in metrics.values())


def test_non_finite_change_raises():
    x = make_changes(3, 4, 5, seed=11)
    x[0, 0, 0] = float("nan")
    with pytest.raises(FeatureChangeError, match="NaN or inf"):
        objective()(x)
    x[0, 0, 0] = float("inf")
    with pytest.raises(FeatureChangeError):
        objective()(x)


# The projector head ---------------------------------------------------


def test_transform_features_modes():
    h = torch.randn(6, 2, 3, 3).half()
    assert objective().transform_features(h) is h
    out = objective(projector="normalize").transform_features(h)
    assert out.shape == (6, 18) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(6))
    assert objective(projector="normalize").parameters() == []


def test_mlp_projector_trains_and_round_trips():
    torch.manual_seed(0)
    obj = objective(projector="mlp", projector_hidden=16, projector_out=8)
    with pytest.raises(RuntimeError, match="setup"):
        obj.parameters()
    obj.setup(20)
    params = obj.parameters()
    assert params and all(p.requires_grad for p in params)
    base = torch.randn(5, 20)
    edited = base + torch.randn(3, 5, 20)
    with torch.no_grad():
        h0 = obj.transform_features(base)  # (N, 8)
    h1 = obj.transform_features(edited.reshape(15, 20)).reshape(3, 5, 8)
    assert torch.allclose(h1.norm(dim=-1), torch.ones(3, 5), atol=1e-5)
    obj(h1 - h0)[0].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)

    torch.manual_seed(1)
    other = objective(projector="mlp", projector_hidden=16, projector_out=8)
    other.setup(20)
    other.load_state_dict(obj.state_dict())
    obj.train(False)
    other.train(False)
    assert torch.equal(obj.transform_features(base), other.transform_features(base))


def test_mlp_head_is_seeded():
    def build():
        torch.manual_seed(3)
        obj = objective(projector="mlp", projector_depth=1)
        obj.setup(7)
        return obj.state_dict()

    a, b = build(), build()
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# Registration ---------------------------------------------------------


def test_registers_latentclr():
    seen = {}

    def register(name, factory, *, options=None, summary=""):
        seen[name] = (factory, options, summary)

    contrastive_plugin.lclr_register_objectives(register=register)
    factory, options, summary = seen["latentclr"]
    assert options is LatentCLROptions and summary
    obj = factory(options=LatentCLROptions(temperature=0.25))
    assert isinstance(obj, LatentCLR) and obj.options.temperature == 0.25


# The similarity matrix ------------------------------------------------


def test_symmetric_gram_equals_the_plain_product(monkeypatch):
    from lclr_contrastive import gram

    monkeypatch.setattr(gram, "_BLOCK", 4)
    x = torch.randn(11, 5, dtype=torch.float64)
    assert torch.allclose(gram.symmetric_gram(x), x @ x.T, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e30])
def test_cosine_gram_values_and_gradient(monkeypatch, scale):
    from lclr_contrastive import gram

    monkeypatch.setattr(gram, "_BLOCK", 3)
    x = torch.randn(
        7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    x[2] = 0
    sim, zero = gram.cosine_gram(x * scale)
    unit = torch.nn.functional.normalize(x, dim=1)
    assert torch.allclose(sim, unit @ unit.T, atol=1e-12)
    assert zero.tolist() == [i == 2 for i in range(7)]
    # a zero row passes no gradient (the similarity jumps there)
    x.requires_grad_(True)
    (gram.cosine_gram(x * scale)[0] * torch.randn(7, 7, dtype=x.dtype)).sum().backward()
    assert torch.all(x.grad[2] == 0) and torch.all(x.grad[0] != 0)
    rows = x.detach()[[0, 1, 3, 4, 5, 6]].requires_grad_(True)
    weights = torch.randn(6, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: (gram.cosine_gram(t * scale)[0] * weights).sum(), (rows,)
    )
