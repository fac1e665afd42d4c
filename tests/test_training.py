"""The trainer: reproducibility, resume, Ctrl-C, the data path of one step."""

import json
import os
import signal

import pytest
import torch
from conftest import CountFeatures, tiny_config

from lclr import hookimpl, runfolder
from lclr.errors import RunFolderError
from lclr.registry import get_registry
from lclr.training import RunInterrupted, compose_codes, train

pytestmark = pytest.mark.usefixtures("fresh_registry")


def directions_of(folder):
    tensors, meta = runfolder.read_directions(folder)
    return tensors, meta


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("direction", ["global", "linear", "nonlinear"])
def test_same_seed_gives_identical_directions(tmp_path, direction):
    config = tiny_config(direction=direction, iterations=6)
    train(config, tmp_path / "a")
    train(config, tmp_path / "b")
    assert_same_tensors(
        directions_of(tmp_path / "a")[0], directions_of(tmp_path / "b")[0]
    )
    train(config.evolve(seed=1), tmp_path / "c")
    a, c = directions_of(tmp_path / "a")[0], directions_of(tmp_path / "c")[0]
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    config = tiny_config(alpha_range=(0.5, 2.0))
    train(config, tmp_path / "whole")
    train(config.evolve(iterations=5), tmp_path / "parts")
    train(config, tmp_path / "parts", resume=True)
    whole, parts = directions_of(tmp_path / "whole"), directions_of(tmp_path / "parts")
    assert_same_tensors(whole[0], parts[0])
    assert parts[1]["step"] == 12
    # The first part also logged its last step, 5; every other line matches.
    lines = (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()
    lines = [x for x in lines if json.loads(x)["step"] != 5]
    assert lines == (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()


class InterruptAt:
    def __init__(self, step):
        self.at = step

    @hookimpl
    def lclr_step_end(self, run, step, metrics):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_writes_a_checkpoint_and_resumes_exactly(tmp_path):
    config = tiny_config()
    train(config, tmp_path / "whole")
    registry = get_registry()
    registry.pm.register(InterruptAt(7), name="interrupt")
    with pytest.raises(RunInterrupted, match="resume with: lclr run --resume"):
        train(config, tmp_path / "cut")
    registry.pm.unregister(name="interrupt")
    state = runfolder.load_state(tmp_path / "cut" / runfolder.STATE)
    assert state["step"] == 7
    train(config, tmp_path / "cut", resume=True)
    assert_same_tensors(
        directions_of(tmp_path / "whole")[0], directions_of(tmp_path / "cut")[0]
    )


class AbortAt:
    """A second Ctrl-C: KeyboardInterrupt in the middle of step ``at``."""

    def __init__(self, step):
        self.at = step

    @hookimpl
    def lclr_step_end(self, run, step, metrics):
        if step == self.at:
            raise KeyboardInterrupt


def test_a_second_ctrl_c_keeps_the_last_checkpoint_and_says_so(tmp_path):
    # found in review: an abort (second Ctrl-C) ended in a bare "interrupted";
    # a new run aborted before its first checkpoint left a folder that could
    # neither resume nor start again
    registry = get_registry()
    config = tiny_config(checkpoint_every=4)
    registry.pm.register(AbortAt(6), name="abort")
    try:
        with pytest.raises(RunInterrupted, match="checkpoint of step 4 is kept"):
            train(config, tmp_path / "late")
        with pytest.raises(RunInterrupted, match="run the same command again"):
            train(config.evolve(checkpoint_every=10), tmp_path / "early")
    finally:
        registry.pm.unregister(name="abort")
    assert runfolder.load_state(tmp_path / "late" / runfolder.STATE)["step"] == 4
    assert not (tmp_path / "early").exists()
    train(config, tmp_path / "early")
    train(config, tmp_path / "late", resume=True)
    assert_same_tensors(
        directions_of(tmp_path / "early")[0], directions_of(tmp_path / "late")[0]
    )


def test_resume_to_a_new_total(tmp_path):
    train(tiny_config(iterations=4), tmp_path / "r")
    run = train(tiny_config(iterations=9), tmp_path / "r", resume=True)
    assert run.step == 9
    steps = [json.loads(x)["step"] for x in (tmp_path / "r" / "metrics.jsonl").open()]
    assert steps == [2, 4, 6, 8, 9]


def test_an_existing_run_folder_is_never_overwritten(tmp_path):
    train(tiny_config(iterations=2), tmp_path / "r")
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    with pytest.raises(RunFolderError, match="resume it with"):
        train(tiny_config(iterations=2, seed=5), tmp_path / "r")
    after = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    assert before == after


def test_one_step_runs_one_base_and_one_batched_edited_forward(tmp_path):
    from lclr.training import RunState, build_components, make_optimizer, train_step

    config = tiny_config(k=3, batch_size=4)
    g, d, obj, layer = build_components(config)
    counter = CountFeatures(g)
    opt, sched = make_optimizer(config, d, obj)
    run = RunState(config, tmp_path, g, d, obj, layer, opt, sched, torch.Generator())
    before = [p.detach().clone() for p in d.parameters()]
    metrics = train_step(run)
    # Base features without gradient, then all K·N edited codes in one call;
    # the first step also probes the graph's memory on one and two codes.
    assert counter.sizes == [(4, False), (1, True), (2, True), (12, True)]
    counter.sizes.clear()
    train_step(run)
    assert counter.sizes == [(4, False), (12, True)]
    assert {"loss", "acc", "lr"} <= set(metrics)
    assert any(not torch.equal(a, b) for a, b in zip(before, d.parameters()))
    assert all(p.grad is None for p in g.parameters())


def test_chunked_forward_matches_the_single_batch(tmp_path):
    from lclr.speed import features_of
    from lclr.training import build_components

    g, *_ = build_components(tiny_config())
    codes = torch.randn(10, g.latent_dim)
    whole = features_of(g, codes, "conv2")
    chunked = features_of(g, codes, "conv2", chunk_size=3)
    assert torch.allclose(chunked, whole, atol=1e-6)


def test_compose_codes_puts_the_edit_in_chosen_layers_only():
    base = torch.zeros(2, 4)
    edited = torch.ones(3, 2, 4)
    flat = compose_codes(base, edited, None, 5)
    assert flat.shape == (6, 4)
    plus = compose_codes(base, edited, (1, 3), 5)
    assert plus.shape == (6, 5, 4)
    assert plus[:, [1, 3]].eq(1).all() and plus[:, [0, 2, 4]].eq(0).all()


def test_edit_layers_change_only_later_layers(tmp_path):
    # An edit to the toy's last code cannot move its first layer's features.
    from lclr.training import build_components

    g, d, *_ = build_components(tiny_config(edit_layers=(2,)))
    codes = g.sample_latent(4, seed=3)
    x = compose_codes(codes, d(codes, 1.0), (2,), 3)
    base = g.features(codes, "fc").repeat(3, 1, 1, 1)
    assert torch.equal(g.features(x, "fc"), base)
    assert not torch.equal(
        g.features(x, "conv2"), g.features(codes, "conv2").repeat(3, 1, 1, 1)
    )


def test_an_edit_that_changes_nothing_is_one_clear_error(tmp_path):
    from lclr.errors import LclrError

    config = tiny_config(edit_layers=(2,), layer="fc", iterations=1)
    with pytest.raises(LclrError, match="unchanged"):
        train(config, tmp_path / "r")


def test_projector_head_is_trained_saved_and_resumed_exactly(tmp_path):
    # The authors' variant with a trainable MLP head: the head is part of the
    # optimiser and of the checkpoint, so a resumed run matches exactly.
    options = {"variant": "authors", "projector": "mlp"}
    config = tiny_config(objective_options=options, direction="global")
    whole = train(config, tmp_path / "whole")
    train(config.evolve(iterations=5), tmp_path / "parts")
    parts = train(config, tmp_path / "parts", resume=True)
    head = whole.objective.state_dict()
    assert head, "the MLP head has parameters"
    for name, value in head.items():
        assert torch.equal(value, parts.objective.state_dict()[name]), name
    assert_same_tensors(
        directions_of(tmp_path / "whole")[0], directions_of(tmp_path / "parts")[0]
    )


def test_an_abort_while_a_checkpoint_is_written_names_the_one_before(
    tmp_path, monkeypatch
):
    # found in review: the step was recorded as saved before the files were
    # written, so an abort in the write named a checkpoint that did not exist
    real = runfolder.save_state
    calls = []

    def save_then_abort(path, state):
        calls.append(state["step"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(path, state)

    monkeypatch.setattr(runfolder, "save_state", save_then_abort)
    with pytest.raises(RunInterrupted, match="checkpoint of step 4 is kept"):
        train(tiny_config(checkpoint_every=4), tmp_path / "run")
    assert calls == [4, 8]
    assert runfolder.load_state(tmp_path / "run" / runfolder.STATE)["step"] == 4
