"""Data-parallel training: real torchrun jobs of 2 CPU processes on gloo,
compared with one process that samples the same 2·N latents per step."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from lclr import distributed, hookimpl, runfolder
from lclr.config import RunConfig
from lclr.distributed import World
from lclr.errors import ConfigError
from lclr.registry import get_registry
from lclr.training import train

pytestmark = pytest.mark.usefixtures("fresh_registry")

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed with gloo",
)

# Rank 1 dies after step 7; the job checkpoints every 5 steps.
# A trained projector head, without batch norm (its statistics stay per process),
# and a weight decay about as large as the gradients: Adam's steps then depend
# on the gradients' scale, so a wrong factor between processes would show.
HEAD = {"projector": "mlp", "projector_batchnorm": False}
CONFIG = tiny_config(
    iterations=12, alpha_range=(0.5, 2.0), objective_options=HEAD, weight_decay=0.25
)


def torchrun(cwd: Path, *args: str, env: dict | None = None):
    """``torchrun --nproc-per-node 2 -m lclr -q run ARGS`` on this machine only."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--standalone", "-m", "lclr", "-q", "run", *args]  # fmt: skip
    extra = {"OMP_NUM_THREADS": "1", distributed.TIMEOUT_ENV: "180"}
    if Path("/sys/class/net/lo").exists():
        extra["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's links stay on loopback
    return subprocess.run(
        cmd, cwd=cwd, env={**os.environ, **extra, **(env or {})},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def directions(folder: Path) -> dict[str, torch.Tensor]:
    return runfolder.read_directions(folder)[0]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def logged(folder: Path) -> dict[int, dict]:
    lines = (folder / runfolder.METRICS).read_text().splitlines()
    return {row["step"]: row for row in map(json.loads, lines)}


@pytest.fixture(scope="module")
def killed_job(tmp_path_factory):
    """A 2-process job whose rank 1 exits abruptly after step 7."""
    tmp = tmp_path_factory.mktemp("killed")
    (tmp / "config.json").write_text(CONFIG.to_json())
    result = torchrun(
        tmp, "--config", "config.json", "--out", "run", "--no-render",
        env={"LCLR_TOY_EXIT_AT": "7:1"},
    )  # fmt: skip
    return tmp / "run", result


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """One process sampling both streams: 5 steps, and all 12."""
    tmp = tmp_path_factory.mktemp("one")
    config = CONFIG.evolve(world_size=2)
    train(config.evolve(iterations=5), tmp / "five")
    train(config, tmp / "twelve")
    return tmp


@needs_gloo
def test_two_processes_train_like_one_process_on_their_union_batch(
    killed_job, one_process, tmp_path
):
    folder, _ = killed_job
    # Steps 1-5 of the job ran normally; its checkpoint is from step 5.
    assert runfolder.load_state(folder / runfolder.STATE)["step"] == 5
    assert runfolder.read_config(folder).world_size == 2
    two = directions(folder)
    assert max_difference(two, directions(one_process / "five")) <= 1e-6
    # Every rank's loss saw both ranks' samples: the logged losses agree.
    for step in (2, 4):
        a, b = logged(folder)[step], logged(one_process / "five")[step]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    # One stream alone (rank 0's latents only) trains something else.
    train(CONFIG.evolve(iterations=5), tmp_path / "rank0-only")
    assert max_difference(two, directions(tmp_path / "rank0-only")) > 1e-4


@needs_gloo
def test_a_dead_rank_stops_the_job_and_resume_finishes_it(
    killed_job, one_process, tmp_path
):
    folder, result = killed_job
    assert result.returncode != 0  # torchrun stopped the job: no hang
    assert "exitcode  : 17" in result.stderr  # rank 1's own exit, reported
    # No process of ours printed a traceback (torchrun prints its own).
    frames = [x for x in result.stderr.splitlines() if x.lstrip().startswith("File")]
    assert not [f for f in frames if re.search(r"[/\\]lclr[_a-z]*[/\\]", f)]
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    resumed = torchrun(tmp_path, "--resume", "run", "--no-render")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert runfolder.load_state(copy / runfolder.STATE)["step"] == 12
    assert list(logged(copy)) == [2, 4, 6, 8, 10, 12]
    assert max_difference(directions(copy), directions(one_process / "twelve")) <= 1e-6


WATCH = """
import os, sys, weakref
import torch.distributed as dist
from lclr import hookimpl
from lclr.config import RunConfig
from lclr.registry import get_registry
from lclr.training import train

refs = []

class Watch:
    @hookimpl
    def lclr_run_start(self, run):
        refs.append(weakref.ref(dist.group.WORLD))

get_registry().pm.register(Watch(), name="watch")
train(RunConfig.from_file(sys.argv[1]), sys.argv[2])
verdict = "kept" if refs[0]() is not None else "freed"
open(f"rank{os.environ['RANK']}.txt", "w").write(verdict)  # no shared stdout
"""


@needs_gloo
def test_the_process_group_is_freed_when_training_ends(tmp_path):
    # A group that outlives its session keeps gloo's worker threads running
    # into interpreter shutdown, where one of them may abort the process
    # (seen as a resumed job's rank 1 dying with SIGABRT after finishing).
    (tmp_path / "watch.py").write_text(WATCH)
    (tmp_path / "config.json").write_text(CONFIG.evolve(iterations=2).to_json())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--standalone", "watch.py", "config.json", "run"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", distributed.TIMEOUT_ENV: "180"}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    result = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "freed"


@needs_gloo
def test_a_two_process_checkpoint_resumes_in_one_process(
    killed_job, one_process, tmp_path, caplog
):
    folder, _ = killed_job
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    config = runfolder.read_config(copy)
    with caplog.at_level(logging.WARNING, logger="lclr"):
        run = train(config, copy, resume=True)
    assert "each of the 1 processes samples 2 of its seed streams" in caplog.text
    assert run.config.world_size == 2  # the global batch did not change
    assert max_difference(directions(copy), directions(one_process / "twelve")) <= 1e-6


# The pieces, in one process -------------------------------------------------


def test_stream_zero_is_the_run_seed_and_the_others_differ():
    assert distributed.stream_seed(7, 0) == 7
    seeds = {distributed.stream_seed(7, i) for i in range(1, 100)}
    seeds |= {distributed.stream_seed(8, i) for i in range(1, 100)}
    assert len(seeds) == 198 and all(0 <= s < 2**63 for s in seeds)


def test_each_process_samples_its_share_of_the_streams():
    assert distributed.local_streams(4, World(2, 1, 1)) == range(2, 4)
    assert distributed.local_streams(2, World(2, 0, 0)) == range(0, 1)
    assert distributed.local_streams(3, World()) == range(0, 3)


def test_a_new_run_takes_the_process_count_as_world_size():
    fit = distributed.fit_world_size(RunConfig(), World(2, 0, 0), resume=False)
    assert fit.world_size == 2
    config = RunConfig(world_size=4)
    assert distributed.fit_world_size(config, World(2, 1, 1), resume=False) is config
    with pytest.raises(ConfigError, match="--world-size 3 cannot be split over 2"):
        distributed.fit_world_size(RunConfig(world_size=3), World(2), resume=False)


def test_resuming_never_changes_the_global_batch():
    one = RunConfig(batch_size=16)
    with pytest.raises(ConfigError) as info:
        distributed.fit_world_size(one, World(2, 0, 0), resume=True)
    message = str(info.value)
    assert "\n" not in message
    assert "trained with world_size 1 (a global batch of 1 x 16)" in message
    assert "resume it in one process (lclr run --resume)" in message
    four = RunConfig(world_size=4)
    assert distributed.fit_world_size(four, World(2), resume=True) is four
    with pytest.raises(ConfigError, match="resume it with 1, 2 or 4 processes"):
        distributed.fit_world_size(four, World(3), resume=True)


def test_one_process_helpers_change_nothing():
    x = torch.randn(3, 4, 5, requires_grad=True)
    assert distributed.gather_samples(x) is x
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.broadcast_text("runs/a") == "runs/a"
    assert distributed.resume_command("r") == "lclr run --resume r"


class RecordBaseCodes:
    """Records the codes of each step's base forward (the one without grad)."""

    def __init__(self):
        self.codes = []

    @hookimpl
    def lclr_run_start(self, run):
        real = run.generator.features

        def features(codes, layer):
            if not torch.is_grad_enabled():
                self.codes.append(codes.clone())
            return real(codes, layer)

        run.generator.features = features


def test_one_process_with_two_streams_samples_both_in_order(tmp_path):
    record = RecordBaseCodes()
    get_registry().pm.register(record, name="record")
    run = train(tiny_config(world_size=2, iterations=1, seed=3), tmp_path / "r")
    get_registry().pm.unregister(name="record")
    (codes,) = record.codes  # (2·N, D): stream 0, then stream 1
    n = run.config.batch_size
    for i in (0, 1):
        rng = torch.Generator().manual_seed(distributed.stream_seed(3, i))
        expected = run.generator.sample_latent(n, generator=rng)
        assert torch.equal(codes[i * n : (i + 1) * n], expected)


def test_world_size_is_recorded_and_bad_timeouts_are_refused(monkeypatch):
    assert json.loads(RunConfig(world_size=2).to_json())["world_size"] == 2
    assert RunConfig.from_dict({}).world_size == 1  # older runs: one stream
    with pytest.raises(ConfigError, match="world_size must be at least 1"):
        RunConfig(world_size=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with (
        pytest.raises(ConfigError, match="must be a number of seconds"),
        distributed.session("cpu"),
    ):
        pass


def test_batch_norm_is_named_when_several_processes_share_a_run(caplog):
    from lclr.training import build_components

    bn = tiny_config(direction="nonlinear", direction_options={"batchnorm": True})
    _, directions, objective, _ = build_components(bn)
    with caplog.at_level(logging.WARNING, logger="lclr"):
        assert distributed.note_batch_norm(World(), directions, objective)
        assert not caplog.text  # one process: nothing to say
        found = distributed.note_batch_norm(World(2), directions, objective)
    assert found and found[0] in caplog.text
    assert "normalises over each process's own samples" in caplog.text
    _, directions, objective, _ = build_components(CONFIG)
    assert not distributed.note_batch_norm(World(2), directions, objective)
