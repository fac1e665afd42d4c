"""What a training run shows of itself: sample grids and a collapse check.

The check compares, for each class, 64 samples of G's moving average with
real renders of that class: the distance between the mean images and the
ratio of per-pixel standard deviations (diversity; near 1 is healthy, a
collapsing class falls towards 0). When the shapes predictor's weights are
installed it also reports, per class, the share of samples the predictor
reads as the class they were drawn for, the share it is sure of
(probability >= 0.9), and the share the quality bar's own test calls good
(sure of a class, re-rendered within the bar's error bound): the mean
images' distance cannot see an outline, which a blotch of the right
colour, place and size nearly matches. Grids are saved for the moving
average (``grid_``) and for the raw generator (``grid_raw_``): a raw G
that hops between colour modes from grid to grid while the average is
grey is collapsing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from lclr_shapes import render
from lclr_shapes.gan.config import GanConfig

logger = logging.getLogger(__name__)

GRID_COLUMNS = 8
CHECK_SAMPLES = 64


def to_grid(images: torch.Tensor, columns: int, zoom: int = 3) -> Image.Image:
    """``(N, 3, H, W)`` images in [0, 1] -> one PIL image, row-major."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    pad = rows * columns - n
    if pad:
        images = torch.cat([images, images.new_zeros(pad, 3, h, w)])
    grid = images.view(rows, columns, 3, h, w).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(rows * h, columns * w, 3).clamp(0, 1)
    array = (grid * 255 + 0.5).to(torch.uint8).numpy()
    image = Image.fromarray(array)
    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)


def save_reals(path: Path, config: GanConfig) -> None:
    """A grid of real renders, one row per class, for comparison."""
    gen = torch.Generator().manual_seed(12345)
    factors = render.sample_factors(len(render.SHAPES) * GRID_COLUMNS, gen)
    order = torch.arange(len(render.SHAPES)).repeat_interleave(GRID_COLUMNS)
    factors["shape"] = order
    path.parent.mkdir(parents=True, exist_ok=True)
    to_grid(render.render(factors, config.size), GRID_COLUMNS).save(path)


class Probe:
    """Fixed latents for grids and real statistics for the collapse check."""

    def __init__(self, config: GanConfig):
        self.config = config
        c_dim = len(render.SHAPES)
        gen = torch.Generator().manual_seed(2024)
        # the same z in each column, a class per row
        z = torch.randn(GRID_COLUMNS, config.style_dim, generator=gen)
        self.grid_z = z.repeat(c_dim, 1)
        idx = torch.arange(c_dim).repeat_interleave(GRID_COLUMNS)
        self.grid_c = F.one_hot(idx, c_dim).float()
        self.check_z = torch.randn(
            c_dim * CHECK_SAMPLES, config.style_dim, generator=gen
        )
        idx = torch.arange(c_dim).repeat_interleave(CHECK_SAMPLES)
        self.check_c = F.one_hot(idx, c_dim).float()
        factors = render.sample_factors(c_dim * 256, gen)
        factors["shape"] = torch.arange(c_dim).repeat_interleave(256)
        reals = render.render(factors, config.size).view(c_dim, 256, -1)
        self.real_mean = reals.mean(dim=1)  # (C, 3*H*W)
        self.real_std = reals.std(dim=1).mean(dim=1)  # (C,)
        self.predictor = _try_predictor() if config.size == 32 else None

    @torch.no_grad()
    def sample(self, G, z, c) -> torch.Tensor:
        """Images in [0, 1] from G at full truncation, constant noise (a
        BigGAN-deep on batch statistics), contiguous (the trainer's
        networks compute channels-last)."""
        if self.config.arch == "biggan":
            from lclr_shapes.gan.biggan import sample

            img = sample(G, z, c)
        else:
            img = G(z, c if self.config.conditional else None, noise_mode="const")
        return ((img + 1) / 2).contiguous()

    def report(self, trainer, folder: Path) -> dict:
        """Save a grid PNG and log the per-class collapse check."""
        folder.mkdir(parents=True, exist_ok=True)
        G = trainer.G_ema
        grid = self.sample(G, self.grid_z, self.grid_c)
        to_grid(grid, GRID_COLUMNS).save(folder / f"grid_{trainer.step:06d}.png")
        raw = self.sample(trainer.G, self.grid_z, self.grid_c)
        to_grid(raw, GRID_COLUMNS).save(folder / f"grid_raw_{trainer.step:06d}.png")
        fake = self.sample(G, self.check_z, self.check_c)
        fake = fake.view(len(render.SHAPES), CHECK_SAMPLES, -1)
        mean_dist = (fake.mean(dim=1) - self.real_mean).square().mean(dim=1).sqrt()
        diversity = fake.std(dim=1).mean(dim=1) / self.real_std
        result = {
            "step": trainer.step,
            "minutes": trainer.elapsed / 60,
            "mean_rmse": [round(v, 4) for v in mean_dist.tolist()],
            "diversity": [round(v, 3) for v in diversity.tolist()],
        }
        if self.predictor is not None and self.config.conditional:
            flat = fake.view(-1, 3, self.config.size, self.config.size)
            predicted = self.predictor.predict(flat)
            probs = predicted["probs"].view(len(render.SHAPES), CHECK_SAMPLES, -1)
            own = torch.stack([probs[k, :, k] for k in range(len(probs))])
            result["class_hit"] = [
                round(v, 3) for v in (own > 0.5).float().mean(dim=1).tolist()
            ]
            result["class_sure"] = [
                round(v, 3) for v in (own >= 0.9).float().mean(dim=1).tolist()
            ]
            good = self._good(flat, predicted)
            result["good"] = [round(v, 3) for v in good.tolist()]
            logger.info(
                "predictor: per-class hit %s, sure %s, good %s",
                result["class_hit"],
                result["class_sure"],
                result["good"],
            )
        with open(folder / "checks.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        logger.info(
            "check at step %d: per-class mean RMSE %s, diversity %s",
            trainer.step,
            result["mean_rmse"],
            result["diversity"],
        )
        return result

    def _good(self, images: torch.Tensor, predicted=None) -> torch.Tensor:
        """``(C,)``: per asked class, the share of ``images`` (``CHECK_SAMPLES``
        a class, in class order) that pass the quality bar's test;
        ``predicted``: the predictor's reading of them, if already made."""
        from lclr_shapes.quality import good_samples, rerender_error

        if predicted is None:
            predicted = self.predictor.predict(images)
        good = good_samples(predicted, rerender_error(images, predicted))
        return good.view(len(render.SHAPES), CHECK_SAMPLES).float().mean(dim=1)


def _try_predictor():
    """The shipped shapes predictor, or ``None`` when it is not installed."""
    from lclr.errors import CheckpointError

    try:
        from lclr_shapes.predictor import load_predictor

        return load_predictor()
    except (ImportError, CheckpointError):
        return None
