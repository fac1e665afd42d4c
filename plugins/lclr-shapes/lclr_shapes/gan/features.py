"""Discriminators on the features of a frozen, separately trained network.

A pixel discriminator trained from scratch on about 300k images tells
blobs from shapes late: the adversarial recipe's samples keep the right
class and colour but soft outlines. Projected GANs (Sauer et al., 2021)
and vision-aided GANs (Kumari et al., 2022) give D a head start by
reading the images through a frozen pretrained network and training only
light heads on its features. No pretrained network can be downloaded
here, so the recipe trains its own first: a small
:class:`~lclr_shapes.predictor.FactorPredictor` (width 8, not the
evaluator's 16, and another seed), supervised on renders for a couple of
minutes, which count into the run's wall time. Its weights travel in the
training checkpoint, so a resumed run does not train it again.

The heads read the backbone at 16, 8 and 4 pixels and its 128-unit
feature vector; each is conditioned by projection and sees the minibatch
standard deviation, as the pixel D does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lclr_shapes.gan.networks import EqConv2d, EqLinear, halve, lrelu, spread_channel
from lclr_shapes.predictor import SIZE, FactorPredictor, decode
from lclr_shapes.render import into_range, render

TAPS = (6, 13, 20)
"""Indices in the backbone's ``body`` after which its 16, 8 and 4 pixel
feature maps are read (after each max pooling)."""


def backbone_features(net: FactorPredictor, img: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's feature maps at 16, 8 and 4 pixels and its feature
    vector, for ``(N, 3, H, W)`` images in [-1, 1] (resized to 32 pixels
    first, as the predictor does)."""
    if img.shape[-2:] != (SIZE, SIZE):
        img = F.interpolate(img, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    out = []
    x = img
    for i, layer in enumerate(net.body):
        x = layer(x)
        if i in TAPS:
            out.append(x)
    out.append(x)  # (N, 128)
    return out


@torch.no_grad()
def render_target(
    net: FactorPredictor, vector: torch.Tensor, shape: torch.Tensor, size: int
) -> torch.Tensor:
    """A clean render, in [-1, 1], of the factors ``net`` reads from the
    feature ``vector`` of images (the last entry of
    :func:`backbone_features`), drawn as the classes ``shape`` ``(N,)``
    rather than the ones it reads. A fixed target: no gradient flows
    through the reading or the drawing."""
    factors = decode(net.regression(vector))
    factors["shape"] = shape
    return render(into_range(factors), size) * 2.0 - 1.0


def render_distance(img: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The squared distance of ``(N, 3, H, W)`` images to their targets:
    summed over pixels (averaged over colour channels), averaged over the
    batch, so its gradient on one image is of the size of the image's
    error rather than shrunk by its pixel count."""
    return (img - target).square().mean(dim=1).sum(dim=(1, 2)).mean()


class _MapHead(nn.Module):
    """A 3x3 convolution, halvings down to 4 pixels, the minibatch
    standard deviation, a dense layer."""

    def __init__(self, in_ch: int, res: int, hidden: int, group: int):
        super().__init__()
        self.group = group
        self.inp = EqConv2d(in_ch, hidden, 3)
        self.convs = nn.ModuleList()
        while res > 4:
            self.convs.append(EqConv2d(hidden, hidden, 3))
            res //= 2
        self.fc = EqLinear((hidden + 1) * 16, hidden)

    def forward(self, x: torch.Tensor, parts: int = 1, c=None) -> torch.Tensor:
        x = lrelu(self.inp(x))
        for conv in self.convs:
            x = halve(lrelu(conv(x)))
        x = spread_channel(x, self.group, parts, c)
        return lrelu(self.fc(x.flatten(1)))


class _VectorHead(nn.Module):
    """The minibatch standard deviation and a dense layer."""

    def __init__(self, in_dim: int, hidden: int, group: int):
        super().__init__()
        self.group = group
        self.fc = EqLinear(in_dim + 1, hidden)

    def forward(self, x: torch.Tensor, parts: int = 1, c=None) -> torch.Tensor:
        x = spread_channel(x[:, :, None, None], self.group, parts, c)[:, :, 0, 0]
        return lrelu(self.fc(x))


class FeatureHeads(nn.Module):
    """One conditional head per feature level of a width-``width`` backbone.

    Each sees the standard deviation of its features over the batch (groups
    of up to ``group``, or with ``by_class`` each class), as the pixel D
    does: without it the heads judged samples one by one, and G drew every
    sample of a class in one hue.

    ``forward`` takes the list :func:`backbone_features` returns and the
    ``(N, c_dim)`` one-hot classes and gives ``(N, levels)`` logits;
    ``parts`` is :class:`~lclr_shapes.gan.networks.Discriminator`'s.
    """

    def __init__(
        self,
        width: int,
        c_dim: int,
        hidden: int = 64,
        group: int = 32,
        by_class: bool = False,
    ):
        super().__init__()
        if by_class and not c_dim:
            raise ValueError("by_class needs classes (c_dim > 0)")
        self.by_class = by_class
        levels = [(width, 16), (2 * width, 8), (4 * width, 4)]
        heads: list[nn.Module] = [
            _MapHead(ch, res, hidden, group) for ch, res in levels
        ]
        heads.append(_VectorHead(128, hidden, group))
        self.heads = nn.ModuleList(heads)
        self.c_dim = c_dim
        self.hidden = hidden
        n_out = hidden if c_dim else 1
        self.outs = nn.ModuleList(EqLinear(hidden, n_out) for _ in heads)
        self.embeds = (
            nn.ModuleList(EqLinear(c_dim, hidden) for _ in heads) if c_dim else None
        )

    def forward(
        self, feats: list[torch.Tensor], c: torch.Tensor | None, parts: int = 1
    ) -> torch.Tensor:
        logits = []
        for i, (head, out) in enumerate(zip(self.heads, self.outs)):
            x = out(head(feats[i], parts, c if self.by_class else None))
            if self.embeds is None:
                logits.append(x[:, 0])
            else:
                cmap = self.embeds[i](c)
                logits.append((x * cmap).sum(dim=1) / math.sqrt(self.hidden))
        return torch.stack(logits, dim=1)
