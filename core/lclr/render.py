"""Pictures of a run: a PNG grid of all directions and a GIF per direction."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

GAP = 4  # pixels between samples in a grid row


def to_pil(images: torch.Tensor, scale: int = 1) -> list[Image.Image]:
    """(N, 3, H, W) in [0, 1] → PIL images, enlarged ``scale`` times."""
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    out = [Image.fromarray(a) for a in arr]
    if scale > 1:
        out = [
            im.resize((im.width * scale, im.height * scale), Image.NEAREST)
            for im in out
        ]
    return out


def _scale_for(size: int) -> int:
    return max(1, 96 // size)


@torch.no_grad()
def sweep(run, codes: torch.Tensor, k: int, alphas: list[float]) -> torch.Tensor:
    """(len(alphas), N, 3, H, W): the samples edited along direction ``k``."""
    frames = []
    for a in alphas:
        if a == 0:
            frames.append(run.generator.synthesize(codes))
        else:
            frames.append(run.images(codes, k, a))
    return torch.stack(frames)


def render_run(
    run,
    out_dir: str | Path,
    *,
    samples: int = 3,
    steps: int = 7,
    alpha: float | None = None,
    seed: int = 0,
    gif: bool = True,
    gif_frames: int = 16,
) -> list[Path]:
    """Render ``run`` into ``out_dir``; returns the files written.

    ``grid.png``: a row per direction, for each sample the columns go from
    −α to +α with the unedited image in the middle. ``direction_KK.gif``:
    the samples side by side, swept from −α to +α and back.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    alpha = float(alpha or run.config.alpha)
    steps = steps + 1 - steps % 2  # odd, so the original sits in the middle
    alphas = np.linspace(-alpha, alpha, steps).tolist()
    alphas[steps // 2] = 0.0
    device = next(run.generator.parameters(), torch.empty(0)).device
    codes = run.generator.sample_latent(samples, seed=seed).to(device)
    k_total = run.directions.k

    rows = [sweep(run, codes, k, alphas) for k in range(k_total)]  # (S, N, 3, H, W)
    size = rows[0].shape[-1]
    scale = _scale_for(size)
    cell = size * scale
    width = samples * steps * cell + (samples - 1) * GAP
    grid = Image.new("RGB", (width, k_total * cell), "white")
    for k, row in enumerate(rows):
        for i in range(samples):
            for s, im in enumerate(to_pil(row[:, i], scale)):
                x = i * (steps * cell + GAP) + s * cell
                grid.paste(im, (x, k * cell))
    written = [out_dir / "grid.png"]
    grid.save(written[0])

    if gif:
        half = np.linspace(-alpha, alpha, gif_frames).tolist()
        loop = half + half[::-1][1:-1]
        for k in range(k_total):
            frames = sweep(run, codes, k, loop)  # (T, N, 3, H, W)
            pictures = []
            for t in range(frames.shape[0]):
                strip = Image.new(
                    "RGB", (samples * cell + (samples - 1) * GAP, cell), "white"
                )
                for i, im in enumerate(to_pil(frames[t], scale)):
                    strip.paste(im, (i * (cell + GAP), 0))
                pictures.append(strip)
            path = out_dir / f"direction_{k:02d}.gif"
            pictures[0].save(
                path, save_all=True, append_images=pictures[1:], duration=80, loop=0
            )
            written.append(path)
    log.debug("rendered %d files into %s", len(written), out_dir)
    return written
