"""Image grids of renders (``lclr shapes preview``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lclr_shapes.render import render, sample_factors

__all__ = ["grid_image", "save_grid", "write_grid"]


def grid_image(images: Tensor, cols: int, pad: int = 1):
    """``(N, 3, H, W)`` images in ``[0, 1]`` as one PIL image, ``cols`` wide,
    separated by ``pad`` white pixels."""
    from PIL import Image

    n, c, h, w = images.shape
    rows = -(-n // cols)
    canvas = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        canvas[:, top : top + h, left : left + w] = images[i]
    pixels = (canvas.permute(1, 2, 0) * 255).round().byte().numpy()  # (H, W, 3)
    return Image.fromarray(pixels)


def write_grid(
    path: str | Path,
    rows: int = 8,
    cols: int = 8,
    size: int = 32,
    seed: int = 0,
    zoom: int = 2,
) -> Path:
    """Render ``rows * cols`` random samples of ``seed`` into a PNG grid."""
    gen = torch.Generator().manual_seed(seed)
    images = render(sample_factors(rows * cols, gen), size)
    return save_grid(path, images, cols, zoom)


def save_grid(
    path: str | Path,
    images: Tensor,
    cols: int,
    zoom: int = 1,
    labels: list[str] | None = None,
) -> Path:
    """Save :func:`grid_image` of ``images``, each pixel a ``zoom`` square,
    creating the folders above ``path``; ``labels``, one per row, are
    written in a margin on the left."""
    from PIL import Image

    image = grid_image(images, cols)
    if zoom > 1:
        image = image.resize(
            (image.width * zoom, image.height * zoom), Image.Resampling.NEAREST
        )
    if labels:
        image = _label_rows(image, labels, (images.shape[2] + 1) * zoom, zoom)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _label_rows(image, labels: list[str], row_height: int, top: int):
    """``image`` with a white margin on the left holding one label per row
    of height ``row_height`` (the first row starting ``top`` pixels down),
    each centred on its row."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    draw = ImageDraw.Draw(image)
    boxes = [draw.textbbox((0, 0), label, font=font) for label in labels]
    margin = max(box[2] for box in boxes) + 8
    out = Image.new("RGB", (image.width + margin, image.height), "white")
    out.paste(image, (margin, 0))
    draw = ImageDraw.Draw(out)
    for r, (label, box) in enumerate(zip(labels, boxes)):
        y = top + r * row_height + (row_height - (box[3] - box[1])) // 2 - box[1]
        draw.text((4, y), label, fill="black", font=font)
    return out
