"""The BigGAN-deep generator in plain PyTorch.

Module and buffer names follow the state dicts of the ``pytorch-pretrained-
biggan`` distribution, so its files load key for key (``loading`` folds the
spectral norm into plain weights first). Differences from that package, none
of which changes an eval-mode output:

- spectral normalisation is applied once, at load, as its eval mode does,
  instead of by a hook at every forward;
- every block takes its own latent code, so an edit can reach chosen blocks
  only; the same code everywhere is the original network;
- the forward can stop after any block and compute nothing past it, and
  the last convolution computes only the 3 of its channels that are kept;
- in training mode the batch norms use the batch's statistics, so the
  network can be trained (``training`` adds the spectral norm for that).

Shapes: N samples, D = ``z_dim``, C classes, L = 1 + number of blocks codes.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import nn

#: The fields of ``config.json`` and their defaults (the 128 px model's).
DEFAULT_LAYERS = (
    (False, 16, 16),
    (True, 16, 16),
    (False, 16, 16),
    (True, 16, 8),
    (False, 8, 8),
    (True, 8, 4),
    (False, 4, 4),
    (True, 4, 2),
    (False, 2, 2),
    (True, 2, 1),
)


@attrs.frozen(kw_only=True)
class BigGANConfig:
    """The architecture, as ``config.json`` states it.

    ``layers`` holds one ``(up_sample, in_mult, out_mult)`` per block, channel
    counts being multiples of ``channel_width``; the self-attention sits
    before block ``attention_layer_position``. ``class_embed_dim`` is recorded
    but unused: the class embedding has ``z_dim`` entries, as in the format.
    """

    output_dim: int = 128
    z_dim: int = 128
    class_embed_dim: int = 128
    channel_width: int = 128
    num_classes: int = 1000
    layers: tuple[tuple[bool, int, int], ...] = DEFAULT_LAYERS
    attention_layer_position: int = 8
    eps: float = 1e-4
    n_stats: int = 51

    def resolutions(self) -> list[int]:
        """Output side length of each block, 4 px doubled at each up-sampling."""
        res, sides = 4, []
        for up, _, _ in self.layers:
            res = res * 2 if up else res
            sides.append(res)
        return sides

    def has_attention(self) -> bool:
        return 0 <= self.attention_layer_position < len(self.layers)


def stats_for_truncation(
    means: torch.Tensor, variances: torch.Tensor, truncation: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored batch-norm statistics the format uses for ``truncation``.

    ``means`` and ``variances`` are ``(n_stats, C)``, row i measured at
    truncation i / (n_stats - 1). This reproduces the format's own choice to
    the last bit, float rounding of ``truncation / step`` included: between two
    rows it weights the *lower* row by the fractional part, so 0.14 with 51
    rows lands (almost exactly) on row 8, not 7.
    """
    step = 1.0 / (means.shape[0] - 1)
    frac, whole = math.modf(truncation / step)
    i = int(whole)
    if frac == 0.0 or i + 1 == means.shape[0]:  # the latter: odd n_stats only
        return means[i], variances[i]
    mean = means[i] * frac + means[i + 1] * (1 - frac)
    var = variances[i] * frac + variances[i + 1] * (1 - frac)
    return mean, var


class ClassBatchNorm(nn.Module):
    """Batch norm with stored per-truncation statistics (in eval mode; in
    training mode, the batch's statistics).

    Conditional (inside blocks): gain ``1 + scale(cond)`` and bias
    ``offset(cond)`` from the block's condition vector. Otherwise (the final
    norm) a plain learnt ``weight`` and ``bias``.
    """

    def __init__(self, channels: int, cond_dim: int | None, n_stats: int, eps: float):
        super().__init__()
        self.eps = eps
        self.conditional = cond_dim is not None
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        if self.conditional:
            self.scale = nn.Linear(cond_dim, channels, bias=False)
            self.offset = nn.Linear(cond_dim, channels, bias=False)
        else:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def forward(
        self, x: torch.Tensor, truncation: float, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.training:
            # the batch's own statistics (biased variance); the stored ones
            # are left alone, to be measured per truncation after training
            if not self.conditional:
                return F.batch_norm(
                    x, None, None, self.weight, self.bias, training=True, eps=self.eps
                )
            x = F.batch_norm(x, None, None, training=True, eps=self.eps)
            gain = 1 + self.scale(cond)[:, :, None, None]  # (N, C, 1, 1)
            return x * gain + self.offset(cond)[:, :, None, None]
        mean, var = stats_for_truncation(
            self.running_means, self.running_vars, truncation
        )
        if not self.conditional:
            return F.batch_norm(
                x, mean, var, self.weight, self.bias, training=False, eps=self.eps
            )
        mean = mean[None, :, None, None]
        var = var[None, :, None, None]
        gain = 1 + self.scale(cond)[:, :, None, None]  # (N, C, 1, 1)
        bias = self.offset(cond)[:, :, None, None]
        return (x - mean) / torch.sqrt(var + self.eps) * gain + bias


class SelfAttention(nn.Module):
    """Non-local attention over positions, keys and values pooled 2x2.

    ``gamma`` scales the attended values added to the input; it is stored in
    the weights (0 in a network that has not learnt to attend).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.snconv1x1_theta = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_phi = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_g = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.snconv1x1_o_conv = nn.Conv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        query = self.snconv1x1_theta(x).view(n, c // 8, h * w)
        key = F.max_pool2d(self.snconv1x1_phi(x), 2).view(n, c // 8, h * w // 4)
        attn = torch.bmm(query.permute(0, 2, 1), key).softmax(dim=-1)  # (N, HW, HW/4)
        value = F.max_pool2d(self.snconv1x1_g(x), 2).view(n, c // 2, h * w // 4)
        out = torch.bmm(value, attn.permute(0, 2, 1)).view(n, c // 2, h, w)
        return x + self.gamma * self.snconv1x1_o_conv(out)


class Block(nn.Module):
    """A BigGAN-deep residual block: four (norm, ReLU, conv), 1x1 3x3 3x3 1x1.

    The bottleneck has a quarter of the input channels; the shortcut keeps
    the first half of the channels when the block halves them, and both
    paths are up-sampled (nearest) when ``up``.
    """

    def __init__(
        self, c_in: int, c_out: int, cond_dim: int, up: bool, n_stats: int, eps: float
    ):
        super().__init__()
        mid = c_in // 4
        self.up = up
        self.c_out = c_out
        self.bn_0 = ClassBatchNorm(c_in, cond_dim, n_stats, eps)
        self.conv_0 = nn.Conv2d(c_in, mid, 1)
        self.bn_1 = ClassBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_1 = nn.Conv2d(mid, mid, 3, padding=1)
        self.bn_2 = ClassBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_2 = nn.Conv2d(mid, mid, 3, padding=1)
        self.bn_3 = ClassBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_3 = nn.Conv2d(mid, c_out, 1)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, truncation: float
    ) -> torch.Tensor:
        h = self.conv_0(F.relu(self.bn_0(x, truncation, cond)))
        h = F.relu(self.bn_1(h, truncation, cond))
        if self.up:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv_1(h)
        h = self.conv_2(F.relu(self.bn_2(h, truncation, cond)))
        h = self.conv_3(F.relu(self.bn_3(h, truncation, cond)))

        skip = x[:, : self.c_out] if x.shape[1] != self.c_out else x
        if self.up:
            skip = F.interpolate(skip, scale_factor=2, mode="nearest")
        return h + skip


class RGBConv(nn.Conv2d):
    """The last convolution, of which only the first 3 output channels are
    images (the format stores ``channel_width`` of them): it computes those
    3 and no others. A spectral-norm hook still sees the whole weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, ch, H, W)`` -> ``(N, 3, H, W)``."""
        bias = None if self.bias is None else self.bias[:3]
        return self._conv_forward(x, self.weight[:3], bias)


class Synthesis(nn.Module):
    """The part under ``generator.`` in the state dict: codes to image."""

    def __init__(self, config: BigGANConfig):
        super().__init__()
        ch = config.channel_width
        cond_dim = 2 * config.z_dim
        self.channel_width = ch
        self.gen_z = nn.Linear(cond_dim, 4 * 4 * 16 * ch)
        layers: list[nn.Module] = []
        for i, (up, c_in, c_out) in enumerate(config.layers):
            if i == config.attention_layer_position:
                layers.append(SelfAttention(ch * c_in))
            layers.append(
                Block(ch * c_in, ch * c_out, cond_dim, up, config.n_stats, config.eps)
            )
        self.layers = nn.ModuleList(layers)
        self.bn = ClassBatchNorm(ch, None, config.n_stats, config.eps)
        self.conv_to_rgb = RGBConv(ch, ch, 3, padding=1)


class BigGAN(nn.Module):
    """BigGAN-deep: (per-block codes, class vector, truncation) to images."""

    def __init__(self, config: BigGANConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.Linear(config.num_classes, config.z_dim, bias=False)
        self.generator = Synthesis(config)

    @property
    def num_codes(self) -> int:
        """L: one code for ``gen_z``, then one per block."""
        return 1 + len(self.config.layers)

    def layer_names(self) -> list[str]:
        """``layers.0``, ``layers.1``, ...: every block and the attention."""
        return [f"layers.{i}" for i in range(len(self.generator.layers))]

    def code_names(self) -> list[str]:
        """Which module reads each of the L codes."""
        blocks = [
            f"layers.{i}"
            for i, layer in enumerate(self.generator.layers)
            if isinstance(layer, Block)
        ]
        return ["gen_z", *blocks]

    def _conditions(self, z: torch.Tensor, classes: torch.Tensor) -> list[torch.Tensor]:
        """L condition vectors ``[z_l, embed(class)]``, each ``(N, 2D)``."""
        embed = self.embeddings(classes)  # (N, D)
        if z.ndim == 2:
            return [torch.cat((z, embed), dim=1)] * self.num_codes
        if z.shape[1] != self.num_codes:
            raise ValueError(
                f"expected {self.num_codes} codes per sample, got {z.shape[1]}"
            )
        return [torch.cat((z[:, i], embed), dim=1) for i in range(self.num_codes)]

    def forward(
        self,
        z: torch.Tensor,
        classes: torch.Tensor,
        truncation: float,
        stop: int | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1], or the output of ``layers.<stop>``.

        ``z`` is ``(N, D)``, or ``(N, L, D)`` with one code per block;
        ``classes`` is ``(N, C)``, one-hot or a mixture.
        """
        if not 0.0 < truncation <= 1.0:
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        g = self.generator
        conds = iter(self._conditions(z, classes))
        x = g.gen_z(next(conds))  # (N, 16*16ch), stored channels-last
        x = x.view(-1, 4, 4, 16 * g.channel_width).permute(0, 3, 1, 2).contiguous()
        for i, layer in enumerate(g.layers):
            if isinstance(layer, Block):
                x = layer(x, next(conds), truncation)
            else:
                x = layer(x)
            if i == stop:
                return x
        x = g.conv_to_rgb(F.relu(g.bn(x, truncation)))  # (N, 3, H, W)
        return torch.tanh(x)


def layer_shapes(config: BigGANConfig) -> list[tuple[int, int, int]]:
    """``(C, H, W)`` of every entry of ``layers``, in forward order."""
    ch, shapes = config.channel_width, []
    side = 4
    for i, (up, c_in, c_out) in enumerate(config.layers):
        if i == config.attention_layer_position:
            shapes.append((ch * c_in, side, side))
        side = side * 2 if up else side
        shapes.append((ch * c_out, side, side))
    return shapes


def check_config(config: BigGANConfig) -> list[str]:
    """What is wrong with ``config`` as an architecture (empty when sound)."""
    problems = []
    ch, layers = config.channel_width, config.layers
    if min(config.z_dim, ch, config.num_classes) < 1 or config.n_stats < 2:
        problems.append("z_dim, channel_width, num_classes must be >= 1, n_stats >= 2")
    if not layers or layers[0][1] != 16:
        problems.append("the first block must take 16 x channel_width channels")
    for i, (_, c_in, c_out) in enumerate(layers):
        if c_out not in (c_in, c_in // 2) or c_out < 1 or ch * c_in < 4:
            problems.append(f"block {i} must keep or halve its channels")
        if i and c_in != layers[i - 1][2]:
            problems.append(f"block {i} must take the channels block {i - 1} gives")
    if layers[-1:] and ch * layers[-1][2] != ch:
        problems.append("the last block must end with channel_width channels")
    if ch < 3:
        problems.append("channel_width must be at least 3 (RGB)")
    if config.has_attention():
        c = ch * layers[config.attention_layer_position][1]
        if c < 8:
            problems.append("the attention needs at least 8 channels")
    sides = config.resolutions()
    if sides and sides[-1] != config.output_dim:
        problems.append(
            f"its blocks give {sides[-1]} px, not output_dim {config.output_dim}"
        )
    return problems
