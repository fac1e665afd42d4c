"""The discriminator used to train the shapes generator.

A residual StyleGAN2-style discriminator: equalised learning rate, a
minibatch standard-deviation layer at 4x4, and class conditioning by
projection (the inner product of an embedding of the one-hot class with
the penultimate features), the form NVIDIA's conditional releases use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_SQRT2 = math.sqrt(2.0)


def halve(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling, ``(N, C, H, W)`` -> ``(N, C, H/2, W/2)``.

    Written as a depthwise convolution with taps of 1/4: the same values as
    ``F.avg_pool2d(x, 2)``, and on CPU 1.2-2.5x faster forward and backward
    at the discriminator's sizes (batch 32, 32 to 8 pixels).
    """
    c = x.shape[1]
    taps = x.new_full((c, 1, 2, 2), 0.25)
    return F.conv2d(x, taps, stride=2, groups=c)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) scaled by sqrt(2) to keep unit variance."""
    return F.leaky_relu(x, 0.2) * _SQRT2


class EqLinear(nn.Module):
    """A linear layer whose weight is scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None
        self.scale = 1.0 / math.sqrt(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_dim)`` -> ``(N, out_dim)``."""
        return F.linear(x, self.weight * self.scale, self.bias)


class EqConv2d(nn.Module):
    """A 'same' convolution with an equalised learning rate."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_ch, H, W)`` -> ``(N, out_ch, H, W)``."""
        w = self.weight * self.scale
        return F.conv2d(x, w, self.bias, padding=self.padding)


class ResBlock(nn.Module):
    """Two 3x3 convolutions and a 2x downsampling, with a 1x1 skip path."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqConv2d(in_ch, in_ch, 3)
        self.conv1 = EqConv2d(in_ch, out_ch, 3)
        self.skip = EqConv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_ch, H, W)`` -> ``(N, out_ch, H/2, W/2)``."""
        skip = self.skip(halve(x))
        x = lrelu(self.conv0(x))
        x = lrelu(self.conv1(halve(x)))
        return (x + skip) / _SQRT2


def minibatch_stddev(x: torch.Tensor, group: int = 4, parts: int = 1) -> torch.Tensor:
    """Append one channel: the feature std over groups of samples.

    The group is the largest divisor of N not above ``group``. With
    ``parts`` > 1 the batch is that many batches one after the other
    (generated and real images in one pass), each with its own groups.
    """
    if parts > 1:
        return torch.cat([minibatch_stddev(p, group) for p in x.chunk(parts)])
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group, n) + 1) if n % d == 0)
    y = x.reshape(g, n // g, c, h, w)
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (N/g, C, H, W)
    y = y.mean(dim=(1, 2, 3))  # (N/g,)
    y = y.reshape(1, n // g, 1, 1, 1).expand(g, -1, 1, h, w)
    return torch.cat([x, y.reshape(n, 1, h, w)], dim=1)


def class_stddev(x: torch.Tensor, c: torch.Tensor, parts: int = 1) -> torch.Tensor:
    """Append one channel: the feature std over the samples of each
    sample's class in the batch (``c``: ``(N, C)`` one-hot).

    :func:`minibatch_stddev` over groups that mix classes cannot see a
    generator that draws one image per class: the other classes keep the
    group's spread high. Here each class is its own group, whatever its
    count; a class drawn once has spread 0. ``parts`` as there.
    """
    if parts > 1:
        pairs = zip(x.chunk(parts), c.chunk(parts))
        return torch.cat([class_stddev(p, q) for p, q in pairs])
    n, _, h, w = x.shape
    c = c.to(x.dtype)
    share = c / c.sum(dim=0).clamp(min=1)  # (N, C): each class's mean weights
    mean = torch.einsum("nk,nchw->kchw", share, x)
    dev = x - torch.einsum("nk,kchw->nchw", c, mean)
    var = torch.einsum("nk,nchw->kchw", share, dev.square())
    spread = (var + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (C,)
    y = (c @ spread).reshape(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x, y], dim=1)


def spread_channel(
    x: torch.Tensor, group: int, parts: int = 1, c: torch.Tensor | None = None
) -> torch.Tensor:
    """The minibatch standard deviation channel a discriminator reads: over
    each class when the one-hot ``c`` is given (:func:`class_stddev`), else
    over groups of up to ``group`` (:func:`minibatch_stddev`)."""
    if c is not None:
        return class_stddev(x, c, parts)
    return minibatch_stddev(x, group, parts)


class Discriminator(nn.Module):
    """Residual, class-conditional discriminator for square images.

    ``channels`` maps each resolution (size, size/2, ..., 8, 4) to its
    channel count. With ``c_dim == 0`` it is unconditional. The minibatch
    standard deviation is over groups of up to ``mbstd_group`` samples, or
    with ``mbstd_by_class`` over each class (:func:`class_stddev`).
    """

    def __init__(
        self,
        size: int,
        channels: dict[int, int],
        c_dim: int = 0,
        cmap_dim: int = 128,
        mbstd_group: int = 4,
        mbstd_by_class: bool = False,
    ):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        self.size = size
        self.c_dim = c_dim
        self.mbstd_group = mbstd_group
        if mbstd_by_class and not c_dim:
            raise ValueError("mbstd_by_class needs classes (c_dim > 0)")
        self.mbstd_by_class = mbstd_by_class
        self.from_rgb = EqConv2d(3, channels[size], 1)
        blocks = []
        res = size
        while res > 4:
            blocks.append(ResBlock(channels[res], channels[res // 2]))
            res //= 2
        self.blocks = nn.ModuleList(blocks)
        ch = channels[4]
        self.conv = EqConv2d(ch + 1, ch, 3)
        self.fc = EqLinear(ch * 16, ch)
        self.cmap_dim = cmap_dim if c_dim else 1
        self.out = EqLinear(ch, self.cmap_dim)
        self.embed = EqLinear(c_dim, cmap_dim) if c_dim else None
        # an auxiliary classifier of the class (AC-GAN), on the same features
        self.classify = EqLinear(ch, c_dim) if c_dim else None

    def forward(
        self,
        img: torch.Tensor,
        c: torch.Tensor | None = None,
        with_class: bool = False,
        parts: int = 1,
    ):
        """``(N, 3, H, W)`` images in [-1, 1] and ``(N, c_dim)`` one-hot
        classes -> ``(N,)`` logits (real > 0).

        With ``with_class`` (conditional D only) it returns a pair: the
        logits and the ``(N, c_dim)`` class logits of the auxiliary
        classifier. ``parts`` batches of equal size may be judged in one
        pass: each sees only its own minibatch standard deviation.
        """
        x = lrelu(self.from_rgb(img))
        for block in self.blocks:
            x = block(x)
        by = c if self.mbstd_by_class else None
        x = spread_channel(x, self.mbstd_group, parts, by)  # (N, C+1, 4, 4)
        x = lrelu(self.conv(x))
        h = lrelu(self.fc(x.flatten(1)))  # (N, C)
        x = self.out(h)  # (N, cmap_dim)
        if self.embed is None:
            return x[:, 0]
        cmap = self.embed(c)  # (N, cmap_dim)
        logits = (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
        if with_class:
            return logits, self.classify(h)
        return logits
