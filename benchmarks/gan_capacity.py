"""What the recipe's generator can draw when told exactly what to draw.

A diagnostic for the GAN recipe of lclr-shapes, not part of it: the
generator network of a recipe config (StyleGAN2 or BigGAN-deep, built as
the recipe builds it) is fitted *supervised*, without a discriminator, to
render the shapes world. A small MLP maps each sample's true factors (the
shape one-hot, x, y, scale, rotation and hue as points on a circle,
background) to the generator's code; the loss is the L1 distance to the
clean render. Every ``--every`` steps it scores the generator's images of
300 (``--score-samples``) held-out factor draws with the quality bar's own
test (confident class and re-render error within the bound), overall and
by shape.

If a network cannot reach the bar this way in many steps, no adversarial
recipe will make it reach it in fewer: the figures separate what the
architecture can draw from what the adversarial game teaches. Run:

    .venv/bin/python benchmarks/gan_capacity.py --steps 10000 --every 1000 \
        --out build/cap32.json --grid build/cap32.png
    .venv/bin/python benchmarks/gan_capacity.py --arch biggan --steps 4000

Each step is a batch of ``--batch-size`` renders; on one thread of the
2-core build machine, 10,000 steps of the default StyleGAN2 took 14
minutes (scores included), 4,000 of the BigGAN-deep 8.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lclr.errors import os_error_line
from lclr.scripts import ArgumentParser, run_main
from lclr_shapes import render
from lclr_shapes.gan.config import GanConfig, parse_blocks
from lclr_shapes.gan.train import build_generator
from lclr_shapes.predictor import load_predictor
from lclr_shapes.quality import good_samples, rerender, write_error_grid

CODE_SIZE = len(render.SHAPES) + 8
"""Length of the factor code: shape one-hot and eight continuous values."""


def factor_code(f: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(N, CODE_SIZE)``: the factors, each scaled to about [-1, 1]."""
    turn = 2 * math.pi
    values = [
        f["x"] * 4,
        f["y"] * 4,
        (f["scale"] - 0.65) / 0.15,
        torch.cos(f["rotation"]),
        torch.sin(f["rotation"]),
        torch.cos(turn * f["hue"]),
        torch.sin(turn * f["hue"]),
        (f["background"] - 0.2) * 5,
    ]
    one_hot = F.one_hot(f["shape"], len(render.SHAPES)).float()
    return torch.cat([one_hot, torch.stack(values, dim=1)], dim=1)


class Drawer(nn.Module):
    """Factors to images in [-1, 1] through the recipe's generator."""

    def __init__(self, config: GanConfig):
        super().__init__()
        self.arch = config.arch
        self.G = build_generator(config)
        self.encode = nn.Sequential(
            nn.Linear(CODE_SIZE, 256),
            nn.LeakyReLU(0.2),
            nn.Linear(256, 256),
            nn.LeakyReLU(0.2),
            nn.Linear(256, config.style_dim),
        )

    def sampling(self):
        """The mode the recipe samples in: a BigGAN-deep on batch statistics
        (its stored ones are measured only at export), u and v kept."""
        if self.arch == "biggan":
            from lclr_biggan.training import batch_statistics

            return batch_statistics(self.G)
        return contextlib.nullcontext()

    def forward(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        code = self.encode(factor_code(f))
        if self.arch == "biggan":
            # the code is z; the shape is the class, as in the recipe
            c = F.one_hot(f["shape"], len(render.SHAPES)).float()
            return self.G(code, c, 1.0)
        ws = code.unsqueeze(1).expand(-1, self.G.n_latent, -1)  # the code is w
        return self.G.synthesis(ws, noise_mode="const")


def score(drawer: Drawer, predictor, n: int = 300, grid: Path | None = None) -> dict:
    """The quality bar's good share of the drawer's images of ``n`` fixed
    factor draws, overall and by (true) shape, and the median error;
    ``grid``: also draw them above their re-renders there (by true shape)."""
    factors = render.sample_factors(n, torch.Generator().manual_seed(99))
    with torch.no_grad(), drawer.sampling():
        images = ((drawer(factors) + 1) / 2).clamp(0, 1)
    pred = predictor.predict(images)
    error, renders = rerender(images, pred)
    if grid is not None:
        write_error_grid(grid, images, renders, error, factors["shape"])
    good = good_samples(pred, error)
    by_shape = {}  # None for a shape none of the draws has
    for s, name in enumerate(render.SHAPES):
        of_shape = good[factors["shape"] == s]
        by_shape[name] = (
            round(float(of_shape.double().mean()), 3) if len(of_shape) else None
        )
    return {
        "good": round(float(good.double().mean()), 3),
        "median_error": round(float(error.median()), 3),
        "by_shape": by_shape,
    }


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["stylegan2", "biggan"], default="stylegan2")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--every", type=int, default=500, help="steps between scores")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--channels32", type=int, help="G channels at 32 px")
    parser.add_argument("--biggan-width", type=int, help="BigGAN channel_width")
    parser.add_argument(
        "--biggan-blocks", help="BigGAN blocks as train-gan spells them (16-8,8-4u)"
    )
    parser.add_argument("--biggan-attention", type=int, help="BigGAN attention block")
    parser.add_argument("--z-dim", type=int, help="size of z (StyleGAN2: and w)")
    parser.add_argument("--score-samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the rows here as JSON")
    parser.add_argument("--grid", type=Path, help="PNG of the last score's images")
    args = parser.parse_args()
    counts = (args.steps, args.every, args.batch_size, args.threads)
    if min(counts) < 1 or args.score_samples < 20:
        parser.error(
            "--steps, --every, --batch-size, --threads >= 1, --score-samples >= 20"
        )
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    for flag, value in (
        ("--channels32", args.channels32),
        ("--biggan-width", args.biggan_width),
        ("--z-dim", args.z_dim),
    ):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.channels32 is not None and args.arch == "biggan":
        parser.error("--channels32 is for --arch stylegan2; drop it with --arch biggan")
    for flag, value in (
        ("--biggan-width", args.biggan_width),
        ("--biggan-blocks", args.biggan_blocks),
        ("--biggan-attention", args.biggan_attention),
    ):
        if value is not None and args.arch != "biggan":
            parser.error(f"{flag} is for --arch biggan; add --arch biggan or drop it")
    if args.grid is not None and args.grid.suffix.lower() != ".png":
        parser.error(f"--grid '{args.grid}' is not a .png name")
    for path in (args.out, args.grid):  # before the minutes of training, not after
        if path is not None:
            if path.is_dir():
                parser.error(f"{path} is a folder; name a file")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                parser.error(f"cannot write {path}: {os_error_line(exc)}")
    torch.set_num_threads(args.threads)

    changes = {
        "biggan_width": args.biggan_width,
        "biggan_attention": args.biggan_attention,
        "style_dim": args.z_dim,
    }
    if args.channels32 is not None:
        changes["g_channels"] = {**GanConfig().g_channels, 32: args.channels32}
    try:
        if args.biggan_blocks is not None:
            changes["biggan_blocks"] = parse_blocks(args.biggan_blocks)
        changes = {k: v for k, v in changes.items() if v is not None}
        config = GanConfig(arch=args.arch, seed=args.seed, **changes)
    except ValueError as exc:  # an architecture the recipe could not train
        parser.error(str(exc))
    torch.manual_seed(args.seed)
    drawer = Drawer(config)
    opt = torch.optim.Adam(drawer.parameters(), lr=args.lr, betas=(0.0, 0.99))
    data = torch.Generator().manual_seed(args.seed + 1)
    predictor = load_predictor()
    rows, started = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        factors = render.sample_factors(args.batch_size, data)
        target = render.render(factors, config.size) * 2 - 1
        loss = (drawer(factors) - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            last = step == args.steps
            grid = args.grid if last else None
            scores = score(drawer, predictor, args.score_samples, grid)
            row = {"step": step, "l1": round(loss.item(), 4), **scores}
            row["minutes"] = round((time.perf_counter() - started) / 60, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
        }
        args.out.write_text(
            json.dumps({"args": settings, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    run_main(main)
