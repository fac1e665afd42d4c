"""Differentiable augmentation, applied to real and fake images alike.

In the spirit of DiffAugment (Zhao et al., 2020): every operation is a
differentiable function of the image, so the generator is trained
through it, and the discriminator only ever sees augmented images.
Each operation is applied to a sample with probability ``p``, which keeps
the augmentation from leaking into the generated distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("translation", "cutout", "color")


def _pick(n: int, p: float, gen: torch.Generator | None) -> torch.Tensor:
    """``(N, 1, 1, 1)`` float mask, 1 where the operation applies."""
    return (torch.rand(n, 1, 1, 1, generator=gen) < p).float()


def translate(x, ratio: float, p: float, gen=None) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size, edges replicated."""
    n, _, h, w = x.shape
    sh, sw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    dy = torch.randint(-sh, sh + 1, (n,), generator=gen)
    dx = torch.randint(-sw, sw + 1, (n,), generator=gen)
    mask = _pick(n, p, gen)[:, 0, 0, 0].long()
    dy, dx = dy * mask, dx * mask
    padded = F.pad(x, (sw, sw, sh, sh), mode="replicate")
    rows = torch.arange(h).view(1, h, 1) + sh - dy.view(n, 1, 1)
    cols = torch.arange(w).view(1, 1, w) + sw - dx.view(n, 1, 1)
    rows, cols = rows.expand(n, h, w), cols.expand(n, h, w)
    flat = padded.flatten(2)  # (N, C, (H+2sh)*(W+2sw))
    index = (rows * (w + 2 * sw) + cols).flatten(1)  # (N, H*W)
    index = index.unsqueeze(1).expand(-1, x.shape[1], -1)
    return flat.gather(2, index).view_as(x)


def cutout(x, ratio: float, p: float, gen=None) -> torch.Tensor:
    """Fill one square of side ``ratio`` of the image with zero (grey)."""
    n, _, h, w = x.shape
    ch, cw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    cy = torch.randint(0, h, (n, 1, 1), generator=gen)
    cx = torch.randint(0, w, (n, 1, 1), generator=gen)
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    inside = ((ys - cy).abs() <= ch // 2) & ((xs - cx).abs() <= cw // 2)
    keep = 1.0 - inside.unsqueeze(1).float() * _pick(n, p, gen)
    return x * keep


def color(x, p: float, gen=None) -> torch.Tensor:
    """Random brightness, saturation and contrast, as in DiffAugment."""
    n = x.shape[0]
    on = _pick(n, p, gen)
    r = torch.rand(n, 3, 1, 1, 1, generator=gen)
    x = x + on * (r[:, 0] - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = mean + (x - mean) * (1 + on * (r[:, 1] * 2 - 1))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * (1 + on * (r[:, 2] - 0.5))


def augment(
    x: torch.Tensor,
    policy: tuple[str, ...] = ("translation", "cutout"),
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Augment ``(N, 3, H, W)`` images in [-1, 1] by ``policy``, in order.

    Translation moves by up to 1/8 of the size, cutout blanks a square a
    quarter of the size; each is drawn per sample with probability ``p``.
    """
    for name in policy:
        if name == "translation":
            x = translate(x, 0.125, p, generator)
        elif name == "cutout":
            x = cutout(x, 0.25, p, generator)
        elif name == "color":
            x = color(x, p, generator)
        else:
            raise ValueError(f"unknown augmentation {name!r}; use {POLICIES}")
    return x
