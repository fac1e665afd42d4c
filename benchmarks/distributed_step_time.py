"""Seconds per training step of 1 or more processes, on the embedded StyleGAN2.

Runs the real trainer (``lclr.training.train``) into a temporary folder and
times each step from the ``lclr_step_end`` hook; prints the median after the
warm-up steps on rank 0. One process, then two:

    .venv/bin/python benchmarks/distributed_step_time.py
    .venv/bin/torchrun --nproc-per-node 2 --standalone \\
        benchmarks/distributed_step_time.py

N is per process, so two processes train on a global batch of 2·N;
``--world-size 2`` in one process trains on the same 2·N latents alone.
Asserts nothing.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from lclr import distributed, hookimpl
from lclr.config import RunConfig
from lclr.registry import get_registry
from lclr.scripts import ArgumentParser, run_main
from lclr.training import train


class StepClock:
    def __init__(self):
        self.times: list[float] = []

    @hookimpl
    def lclr_run_start(self, run):
        self.times.append(time.perf_counter())

    @hookimpl
    def lclr_step_end(self, run, step, metrics):
        self.times.append(time.perf_counter())


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("-n", type=int, default=16, help="N per process")
    parser.add_argument("--direction", default="nonlinear")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.steps < 2:
        # the median is taken over the times between step ends
        parser.error(f"--steps must be 2 or more, got {args.steps}")
    if not 0 <= args.warmup <= args.steps - 2:
        # steps - 1 times between step ends; the median needs one left
        parser.error(
            f"--warmup must be 0 to --steps - 2 ({args.steps - 2}), got {args.warmup}"
        )

    clock = StepClock()
    get_registry().pm.register(clock, name="step-clock")
    config = RunConfig(
        k=args.k, batch_size=args.n, direction=args.direction,
        iterations=args.steps, checkpoint_every=10**6, device=args.device,
        world_size=args.world_size,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, distributed.session(args.device):
        # rank 0's temporary folder is the run folder of every rank
        folder = distributed.broadcast_text(str(Path(tmp) / "run"))
        world = distributed.current()
        run = train(config, folder)
        steps = [b - a for a, b in zip(clock.times, clock.times[1:], strict=False)]
        seconds = statistics.median(steps[args.warmup :])
        if world.writer:
            g = run.config.world_size
            print(
                f"{world.size} process(es), {torch.get_num_threads()} thread(s) "
                f"each, {args.device}; K={args.k}, N={args.n} per stream, "
                f"{g} stream(s): global batch {g * args.n}"
            )
            print(f"median seconds per step: {seconds:.3f}")
            print(f"edited codes per second: {args.k * g * args.n / seconds:.1f}")


if __name__ == "__main__":
    run_main(main)
