"""The global, linear and nonlinear direction models."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lclr.errors import ConfigError
from lclr.interfaces import DirectionModel
from lclr_directions import plugin as directions_plugin
from lclr_directions.models import (
    GlobalDirections,
    GlobalOptions,
    LinearDirections,
    LinearOptions,
    NonlinearDirections,
    NonlinearOptions,
)

K, N, D = 5, 7, 12

#: id -> a builder (k, d) -> model
MODELS = {
    "global": lambda k, d: GlobalDirections(k, d),
    "linear": lambda k, d: LinearDirections(k, d),
    "linear-bias": lambda k, d: LinearDirections(k, d, LinearOptions(bias=True)),
    "nonlinear": lambda k, d: NonlinearDirections(k, d),
    "nonlinear-small": lambda k, d: NonlinearDirections(
        k, d, NonlinearOptions(depth=2, hidden=24, bias=False, init_scale=0.5)
    ),
    "nonlinear-depth1": lambda k, d: NonlinearDirections(
        k, d, NonlinearOptions(depth=1)
    ),
    "nonlinear-bn": lambda k, d: NonlinearDirections(
        k, d, NonlinearOptions(batchnorm=True)
    ),
}
CONDITIONAL = [name for name in MODELS if name != "global"]


def build(name, k=K, d=D, seed=0):
    torch.manual_seed(seed)
    return MODELS[name](k, d)


def codes(n=N, d=D, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def edit_norms(model, z, alpha):
    return torch.linalg.vector_norm(model(z, alpha) - z, dim=-1)  # (K, N)


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_interface(name):
    model = build(name)
    assert isinstance(model, DirectionModel)
    assert (model.k, model.latent_dim) == (K, D)
    z = codes()
    assert model(z, 1.0).shape == (K, N, D)
    assert model.edit(z, 3, 1.0).shape == (N, D)
    assert model.directions(z).shape == (K, N, D)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("alpha", [0.1, 1.0, 7.0, -3.0])
def test_edit_norm_equals_float_alpha(name, alpha):
    model = build(name)
    z = codes()
    norms = edit_norms(model, z, alpha)
    assert torch.allclose(norms, torch.full_like(norms, abs(alpha)), rtol=1e-5)
    for k in range(K):
        step = torch.linalg.vector_norm(model.edit(z, k, alpha) - z, dim=-1)
        assert torch.allclose(step, torch.full_like(step, abs(alpha)), rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_edit_norm_equals_tensor_alpha(name):
    model = build(name)
    z = codes()
    g = torch.Generator().manual_seed(2)
    per_sample = torch.empty(N).uniform_(-7, 7, generator=g)  # (N,)
    per_edit = torch.empty(K, N).uniform_(-7, 7, generator=g)  # (K, N)
    norms = edit_norms(model, z, per_sample)
    assert torch.allclose(norms, per_sample.abs().expand(K, N), rtol=1e-5)
    norms = edit_norms(model, z, per_edit)
    assert torch.allclose(norms, per_edit.abs(), rtol=1e-5)
    norms = edit_norms(model, z, torch.tensor(2.5))
    assert torch.allclose(norms, torch.full_like(norms, 2.5), rtol=1e-5)
    step = torch.linalg.vector_norm(model.edit(z, 1, per_sample) - z, dim=-1)
    assert torch.allclose(step, per_sample.abs(), rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_edit_agrees_with_forward_and_reverses(name):
    model = build(name)
    z = codes()
    alpha = torch.linspace(-2, 3, N)
    out = model(z, alpha)
    for k in range(K):
        assert torch.allclose(model.edit(z, k, alpha), out[k], atol=1e-6)
        forward = model.edit(z, k, 1.5) - z
        back = model.edit(z, k, -1.5) - z
        assert torch.allclose(back, -forward, atol=1e-6)


def test_global_does_not_depend_on_z():
    model = build("global")
    u = model.directions(codes())  # (K, N, D)
    assert torch.allclose(u, u[:, :1].expand_as(u))
    other = model.directions(codes(seed=9) * 5)
    assert torch.allclose(u[:, 0], other[:, 0])


@pytest.mark.parametrize("name", CONDITIONAL)
def test_conditional_models_depend_on_z(name):
    model = build(name)
    u = model.directions(codes())  # (K, N, D)
    # the unit direction differs from sample to sample, for every k
    spread = (u - u[:, :1]).abs().amax(dim=(1, 2))  # (K,)
    assert torch.all(spread > 1e-3)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(name):
    model = build(name)
    z = codes()
    target = torch.randn(K, N, D, generator=torch.Generator().manual_seed(4))
    loss = (model(z, torch.linspace(0.5, 2, N)) * target).sum()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", MODELS)
def test_init_is_seeded_and_exported(name):
    a, b, c = build(name, seed=5), build(name, seed=5), build(name, seed=6)
    ea, eb, ec = a.export(), b.export(), c.export()
    assert ea.keys() == eb.keys() == dict(a.state_dict()).keys()
    assert all(torch.equal(ea[key], eb[key]) for key in ea)
    assert not all(torch.equal(ea[key], ec[key]) for key in ea)
    fresh = MODELS[name](K, D)
    fresh.load_state_dict(ea)
    z = codes()
    assert torch.equal(fresh(z, 1.0), a(z, 1.0))


def test_parameter_shapes():
    assert build("global").theta.shape == (K, D)
    linear = build("linear-bias")
    assert linear.weight.shape == (K, D, D) and linear.bias.shape == (K, D)
    assert build("linear").bias is None
    mlp = build("nonlinear-small")
    assert [tuple(w.shape) for w in mlp.weights] == [(K, 24, D), (K, D, 24)]
    assert len(mlp.biases) == 0
    deep = build("nonlinear")
    assert [tuple(w.shape) for w in deep.weights] == [(K, D, D)] * 3
    assert [tuple(b.shape) for b in deep.biases] == [(K, D)] * 2


def test_batched_equals_one_direction_at_a_time():
    """The batched forward equals K separate per-direction computations."""
    model = build("nonlinear")
    z = codes()
    u = model.directions(z)
    for k in range(K):
        h = z
        for i, w in enumerate(model.weights):
            h = h @ w[k].T
            if i < len(model.weights) - 1:
                h = torch.relu(h + model.biases[i][k])
        assert torch.allclose(u[k], h / h.norm(dim=-1, keepdim=True), atol=1e-6)
    linear = build("linear-bias")
    u = linear.directions(z)
    for k in range(K):
        h = z @ linear.weight[k].T + linear.bias[k]
        assert torch.allclose(u[k], h / h.norm(dim=-1, keepdim=True), atol=1e-6)


def test_batchnorm_eval_mode_uses_running_stats():
    model = build("nonlinear-bn")
    z = codes()
    model(z, 1.0)  # updates the running statistics
    model.eval()
    one = model.edit(z[:1], 2, 1.0)  # a single sample works in eval mode
    assert torch.allclose(one, model.edit(z, 2, 1.0)[:1], atol=1e-6)
    assert torch.allclose(torch.linalg.vector_norm(one - z[:1]), torch.tensor(1.0))


def test_zero_direction_gives_no_edit_and_no_nan():
    model = build("global")
    with torch.no_grad():
        model.theta[1] = 0
    z = codes()
    out = model(z, 2.0)
    out.sum().backward()
    assert torch.equal(out[1], z)
    assert torch.isfinite(model.theta.grad).all()
    linear = build("linear")
    zero = torch.zeros(2, D)
    assert torch.equal(linear(zero, 1.0), torch.zeros(K, 2, D))


def test_float64_model():
    model = build("linear").double()
    z = codes().double()
    norms = edit_norms(model, z, 0.3)
    assert norms.dtype == torch.float64
    assert torch.allclose(norms, torch.full_like(norms, 0.3), rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(list(MODELS)),
    k=st.integers(1, 6),
    n=st.integers(1, 5),
    d=st.integers(1, 16),
    alpha=st.floats(-20, 20).filter(lambda a: abs(a) > 1e-3),
)
def test_edit_norm_property(name, k, n, d, alpha):
    if name == "nonlinear-bn" and n < 2:
        n = 2  # batch statistics need two samples while training
    model = build(name, k=k, d=d)
    z = codes(n=n, d=d) * 3
    norms = edit_norms(model, z, alpha)
    ok = torch.isclose(norms, torch.full_like(norms, abs(alpha)), rtol=1e-4)
    # a (measure-zero) dead ReLU net may give no direction at all: no edit
    assert torch.all(ok | (norms == 0))
    assert torch.isfinite(model(z, alpha)).all()


# Errors ---------------------------------------------------------------


def test_bad_arguments():
    model = build("linear")
    z = codes()
    with pytest.raises(ValueError, match="alpha"):
        model(z, torch.ones(3))
    with pytest.raises(ValueError, match="alpha"):
        model(z, torch.ones(K + 1, N))
    with pytest.raises(ValueError, match="alpha"):
        model.edit(z, 0, torch.ones(K, N))
    with pytest.raises(ValueError, match="out of range"):
        model.edit(z, K, 1.0)
    with pytest.raises(ValueError, match="codes"):
        model(torch.randn(N, D + 1), 1.0)
    with pytest.raises(ConfigError):
        LinearDirections(0, D)
    with pytest.raises(ConfigError):
        GlobalDirections(2, 0)


@pytest.mark.parametrize(
    "cls, bad",
    [
        (GlobalOptions, {"init_scale": 0.0}),
        (GlobalOptions, {"eps": -1.0}),
        (LinearOptions, {"init_scale": -1.0}),
        (NonlinearOptions, {"depth": 0}),
        (NonlinearOptions, {"hidden": 0}),
        (NonlinearOptions, {"depth": 2.5}),
        (NonlinearOptions, {"bias": "yes"}),
        (LinearOptions, {"bias": 1}),
        (GlobalOptions, {"init_scale": float("inf")}),
    ],
)
def test_bad_options(cls, bad):
    with pytest.raises(ValueError):
        cls(**bad)


def test_registers_three_models():
    seen = {}

    def register(name, factory, *, options=None, summary=""):
        seen[name] = (factory, options, summary)

    directions_plugin.lclr_register_direction_models(register=register)
    assert set(seen) == {"global", "linear", "nonlinear"}
    expected = {
        "global": (GlobalOptions, GlobalDirections),
        "linear": (LinearOptions, LinearDirections),
        "nonlinear": (NonlinearOptions, NonlinearDirections),
    }
    for name, (factory, options, summary) in seen.items():
        opts_cls, model_cls = expected[name]
        assert options is opts_cls and summary
        model = factory(k=3, latent_dim=4, options=opts_cls())
        assert isinstance(model, model_cls)
        assert model(codes(d=4), 1.0).shape == (3, N, 4)
