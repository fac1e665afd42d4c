"""The heavy half of a step: micro-batches, memory budget, device settings."""

import re

import pytest
import torch
from conftest import CountFeatures, tiny_config

from lclr import speed
from lclr.errors import ConfigError
from lclr.training import RunState, build_components, make_optimizer, train_step

pytestmark = pytest.mark.usefixtures("fresh_registry")


def new_run(config, tmp_path):
    g, d, obj, layer = build_components(config)
    opt, sched = make_optimizer(config, d, obj)
    rng = torch.Generator().manual_seed(config.seed)
    return RunState(config, tmp_path, g, d, obj, layer, opt, sched, rng)


def step_gradients(run, chunk):
    """Gradients of one step's loss w.r.t. the directions and the head."""
    g, config = run.generator, run.config
    stream = torch.Generator().manual_seed(3)
    dtype = next(run.directions.parameters()).dtype
    codes = torch.randn(config.batch_size, g.latent_dim, generator=stream).to(dtype)
    with torch.no_grad():
        base = run.objective.transform_features(g.features(codes, run.layer).flatten(1))
    for p in [*run.directions.parameters(), *run.objective.parameters()]:
        p.grad = None
    edited = run.directions(codes, config.alpha)
    x = edited.reshape(-1, edited.shape[-1])
    shape = (config.k, config.batch_size)
    loss, _ = speed.forward_backward(
        g, run.layer, x, base, run.objective, shape, chunk_size=chunk
    )
    params = [*run.directions.parameters(), *run.objective.parameters()]
    return loss.detach(), [p.grad.clone() for p in params]


CASES = {
    "toy": dict(),
    "toy-mlp-head": dict(objective_options={"variant": "authors", "projector": "mlp"}),
    "stylegan2": dict(generator="stylegan2", layer="convs.1", direction="nonlinear"),
}


@pytest.mark.parametrize("case", CASES)
def test_micro_batches_give_the_gradients_of_one_batch(tmp_path, case):
    config = tiny_config(k=3, batch_size=4, **CASES[case])
    run = new_run(config, tmp_path)
    if case == "stylegan2":
        # float64: in float32 a convolution's rounding depends on the batch
        # size, and feature *changes* amplify it to about 1e-5
        run.generator.double()
        run.directions.double()
    loss, whole = step_gradients(run, None)
    for chunk in (1, 5):
        loss_c, parts = step_gradients(run, chunk)
        assert torch.allclose(loss_c, loss, rtol=1e-6, atol=1e-6)
        for a, b in zip(parts, whole, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_a_chunked_step_updates_the_parameters_like_one_batch(tmp_path):
    config = tiny_config(k=3, batch_size=4, direction="nonlinear", iterations=3)
    runs = [new_run(config, tmp_path), new_run(config.evolve(chunk_size=5), tmp_path)]
    for _ in range(3):
        metrics = [train_step(run) for run in runs]
        assert metrics[0]["loss"] == pytest.approx(metrics[1]["loss"], abs=1e-6)
    pairs = zip(runs[0].directions.parameters(), runs[1].directions.parameters())
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_a_memory_budget_picks_micro_batches(tmp_path):
    config = tiny_config(k=4, batch_size=8, generator="stylegan2", layer="convs.2")
    run = new_run(config, tmp_path)
    codes = torch.zeros(32, run.generator.latent_dim)
    per_code, fixed = speed.graph_bytes(run.generator, run.layer, codes)
    feature_dim = 64 * 16 * 16
    # room for the held features (two copies: the paper's objective takes
    # differences of the raw features) and about 10 codes' graphs
    budget = 2 * 32 * feature_dim * 4 + fixed + 10 * per_code * speed.GRAPH_FACTOR
    run = new_run(config.evolve(max_memory=budget / speed.GIB), tmp_path)
    counter = CountFeatures(run.generator)
    train_step(run)
    # base (no grad), the probe, then the 32 edited codes in chunks of 10:
    # pass 1 without, pass 2 with a graph
    chunks = [10, 10, 10, 2]
    assert counter.sizes == (
        [(8, False), (1, True), (2, True)]
        + [(size, False) for size in chunks]
        + [(size, True) for size in chunks]
    )


@pytest.mark.parametrize(
    "options, copies",
    [({}, 2), ({"variant": "authors"}, 3), ({"projector": "mlp"}, 3)],
)
def test_features_are_held_once_unless_the_objective_transforms_them(
    tmp_path, monkeypatch, options, copies
):
    planned = []

    def plan(*args):
        planned.append(args[-1])
        return None

    monkeypatch.setattr(speed, "plan_chunks", plan)
    train_step(new_run(tiny_config(objective_options=options), tmp_path))
    assert planned == [copies]


def test_the_graph_probe_grows_with_the_layer(tmp_path):
    run = new_run(tiny_config(generator="stylegan2", layer="conv1"), tmp_path)
    codes = torch.zeros(4, run.generator.latent_dim)
    early, _ = speed.graph_bytes(run.generator, "conv1", codes)
    late, _ = speed.graph_bytes(run.generator, "convs.3", codes)
    # at least the layer's output, float32, per code
    assert early >= 128 * 4 * 4 * 4
    assert late > 4 * early


def test_a_budget_too_small_for_the_features_is_one_clear_error(tmp_path):
    config = tiny_config(generator="stylegan2", layer="convs.2", max_memory=1e-6)
    run = new_run(config, tmp_path)
    with pytest.raises(
        ConfigError, match="lower -k or --batch-size.*--max-memory"
    ) as e:
        train_step(run)
    # tiny sizes in MiB, never "0.0 GiB"
    assert re.search(r"at least \d+\.\d MiB .* 0\.1 MiB available", str(e.value))


def test_sizes_read_in_the_unit_that_shows_them():
    assert speed.size_text(3 * speed.GIB) == "3.0 GiB"
    assert speed.size_text(300 * 2**20) == "300.0 MiB"
    assert speed.size_text(10) == "0.1 MiB"


def test_autocast_is_off_on_cpu_unless_asked(tmp_path):
    cpu = torch.device("cpu")
    assert not speed.use_autocast(tiny_config(), cpu)
    assert speed.use_autocast(tiny_config(), torch.device("cuda"))
    assert not speed.use_autocast(tiny_config(autocast=False), torch.device("cuda"))
    plain = [train_step(new_run(tiny_config(), tmp_path)) for _ in range(2)]
    off = train_step(new_run(tiny_config(autocast=False), tmp_path))
    assert plain[0] == plain[1] == off
    config = tiny_config(generator="stylegan2", layer="conv1", autocast=True)
    on = train_step(new_run(config, tmp_path))
    assert torch.isfinite(torch.tensor(on["loss"]))


def test_channels_last_gives_the_same_step(tmp_path):
    config = tiny_config(generator="stylegan2", layer="convs.1")
    a = train_step(new_run(config, tmp_path))
    b = train_step(new_run(config.evolve(channels_last=True), tmp_path))
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
