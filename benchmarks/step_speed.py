"""Seconds per LatentCLR training step, and peak memory, on a StyleGAN2.

Builds a StyleGAN2 with random weights at the size asked for (no download),
runs a few warm-up steps and then times the trainer's own ``train_step``:

    .venv/bin/python benchmarks/step_speed.py --size 256 -k 8 -n 8 --layer convs.3

Prints the figures; asserts nothing. Add ``--device cuda`` on a GPU.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from lclr.config import RunConfig
from lclr.training import RunState, build_components, make_optimizer, train_step


def random_checkpoint(size: int, style_dim: int, multiplier: int, folder: Path) -> Path:
    from lclr_stylegan2.loading import save_checkpoint
    from lclr_stylegan2.model import StyleGAN2

    model = StyleGAN2(size, style_dim=style_dim, channel_multiplier=multiplier)
    path = folder / f"random{size}.pt"
    save_checkpoint(path, model, torch.zeros(style_dim), {})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--style-dim", type=int, default=512)
    parser.add_argument("--multiplier", type=int, default=2)
    parser.add_argument("--layer", default=None)
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("-n", type=int, default=8)
    parser.add_argument("--direction", default="nonlinear")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        weights = random_checkpoint(
            args.size, args.style_dim, args.multiplier, Path(tmp)
        )
        config = RunConfig(
            weights=str(weights), layer=args.layer, direction=args.direction,
            k=args.k, batch_size=args.n, device=args.device,
        )  # fmt: skip
        g, d, objective, layer = build_components(config)
        optimizer, scheduler = make_optimizer(config, d, objective)
        run = RunState(config, Path(tmp), g, d, objective, layer, optimizer,
                       scheduler, torch.Generator().manual_seed(0))  # fmt: skip
        train_step(run)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(run)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps

    print(f"StyleGAN2 {args.size}px, style {args.style_dim}, layer {layer}, "
          f"{args.direction}, K={args.k}, N={args.n}, {args.device}, "
          f"{args.threads} threads")  # fmt: skip
    print(f"seconds per step:   {seconds:.3f}")
    print(f"edited codes/s:     {args.k * args.n / seconds:.1f}")
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"peak GPU memory:    {peak:.0f} MiB")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak process RSS:   {rss:.0f} MiB")


if __name__ == "__main__":
    main()
