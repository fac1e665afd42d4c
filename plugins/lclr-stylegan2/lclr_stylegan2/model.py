"""The StyleGAN2 generator (Karras et al., 2020) in plain PyTorch.

Module and parameter names follow the checkpoint layout of the widely used
PyTorch port (``style.1.weight``, ``conv1.conv.modulation.weight``,
``convs.3.conv.blur.kernel``, ``noises.noise_5``, ...), so converted official
checkpoints load with ``strict=True``. No compiled extensions: the FIR
filters and the fused bias + leaky ReLU are written with ordinary torch ops
and run on CPU and GPU alike.

Shapes: N samples, D = ``style_dim``, L = ``n_latent`` per-layer codes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NOISE_MODES = ("const", "random", "none")
MAX_SIZE = 4096  # above every published StyleGAN2; bounds the noise buffers
MAX_TAPS = 16  # FIR filter length (StyleGAN2 uses 4)


def standard_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """Channels per resolution of the official configs (config-f: cm=2)."""
    cm = channel_multiplier
    return {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * cm,
        128: 128 * cm,
        256: 64 * cm,
        512: 32 * cm,
        1024: 16 * cm,
    }


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """A 2-D FIR kernel, separable from ``taps``, normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, pad=(0, 0)
) -> torch.Tensor:
    """Upsample by zero insertion, pad, then convolve with ``kernel``.

    ``x`` is ``(N, C, H, W)``; every channel is filtered alike (true
    convolution, the kernel flipped). ``pad`` is ``(before, after)`` on both
    axes and must not be negative.
    """
    n, c, h, w = x.shape
    p0, p1 = pad
    if up > 1:
        # (N, C, H, 1, W, 1) -> zeros after every sample -> (N, C, H*up, W*up)
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [p0, p1, p0, p1])
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).to(x.dtype)
    weight = weight.view(1, 1, kh, kw).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, groups=c)


def fused_leaky_relu(
    x: torch.Tensor, bias: torch.Tensor, slope: float = 0.2
) -> torch.Tensor:
    """Add a per-channel bias, leaky ReLU, and rescale by sqrt(2)."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), slope) * math.sqrt(2.0)


class PixelNorm(nn.Module):
    """Normalise each vector by its root mean square (its 2nd moment)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, D) -> (N, D)``."""
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (runtime weight scaling)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_dim) -> (N, out_dim)``."""
        bias = self.bias * self.lr_mul
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)


class Blur(nn.Module):
    """FIR low-pass filter applied after a strided transposed conv."""

    def __init__(self, taps: Sequence[float], pad, upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor**2)
        self.pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` filtered; the size changes with ``pad``."""
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling of the to-RGB skip images."""

    def __init__(self, taps: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * factor**2)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, 2H, 2W)``."""
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled by a style.

    Computed by scaling the activations (``x * s``), one convolution shared
    by the batch, and the demodulation coefficients applied to its output;
    :meth:`forward_grouped` is the textbook per-sample-weight form, kept as
    the reference the tests compare against.
    """

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ):
        super().__init__()
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.padding = kernel_size // 2
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        shape = (1, out_channel, in_channel, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.randn(shape))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            pad = ((p + 1) // 2 + factor - 1, p // 2 + 1)
            self.blur = Blur(blur_kernel, pad, upsample_factor=factor)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, groups: int = 1):
        """Plain or 2x-transposed convolution; ``weight`` (O, I/g, k, k)."""
        if not self.upsample:
            return F.conv2d(x, weight, padding=self.padding, groups=groups)
        o = weight.shape[0] // groups
        i = weight.shape[1]
        k = self.kernel_size
        # (g*O, I, k, k) -> (g*I, O, k, k), the transposed-conv layout
        weight = weight.view(groups, o, i, k, k).transpose(1, 2)
        weight = weight.reshape(groups * i, o, k, k)
        out = F.conv_transpose2d(x, weight, stride=2, groups=groups)
        return self.blur(out)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x`` (N, I, H, W), ``w`` (N, D) -> (N, O, H', W')."""
        weight = self.weight[0] * self.scale  # (O, I, k, k)
        style = self.modulation(w)  # (N, I)
        out = self._conv(x * style[:, :, None, None], weight)
        if self.demodulate:
            # sum over I, k, k of (weight * style)^2, per sample: (N, O)
            energy = style.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t()
            out = out * torch.rsqrt(energy + 1e-8)[:, :, None, None]
        return out

    def forward_grouped(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Reference form: one modulated weight per sample, grouped conv."""
        n, _, h, wd = x.shape
        k = self.kernel_size
        style = self.modulation(w).view(n, 1, self.in_channel, 1, 1)
        weight = self.weight * self.scale * style  # (N, O, I, k, k)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8)
            weight = weight * demod.view(n, self.out_channel, 1, 1, 1)
        weight = weight.reshape(n * self.out_channel, self.in_channel, k, k)
        out = self._conv(x.reshape(1, -1, h, wd), weight, groups=n)
        return out.view(n, self.out_channel, *out.shape[2:])


class NoiseInjection(nn.Module):
    """Adds per-pixel noise scaled by one learnt strength."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """``noise`` (N or 1, 1, H, W) or ``None`` for no noise."""
        if noise is None:
            return x
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    """Per-channel bias, then leaky ReLU (0.2) times sqrt(2)."""

    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape-preserving."""
        return fused_leaky_relu(x, self.bias)


class ConstantInput(nn.Module):
    """The learnt 4x4 constant the synthesis starts from."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        """``(N, C, 4, 4)``."""
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv, noise, bias and activation: one synthesis layer."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.conv = ModulatedConv2d(
            in_channel,
            out_channel,
            3,
            style_dim,
            upsample=upsample,
            blur_kernel=blur_kernel,
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x, w, noise=None):
        """``x`` (N, I, H, W), ``w`` (N, D) -> (N, O, H', W')."""
        out = self.activate(self.noise(self.conv(x, w), noise))
        if self.conv_clamp is not None:
            out = out.clamp(-self.conv_clamp, self.conv_clamp)
        return out


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (not demodulated), plus the upsampled skip.

    With ``conv_clamp`` the layer's own output (before the skip is added) is
    clamped to +-conv_clamp.
    """

    def __init__(
        self,
        in_channel: int,
        style_dim: int,
        upsample: bool = True,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.conv_clamp = conv_clamp
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, w, skip=None):
        """``x`` (N, C, H, W) -> (N, 3, H, W), added to the upsampled skip."""
        out = self.conv(x, w) + self.bias
        if self.conv_clamp is not None:
            out = out.clamp(-self.conv_clamp, self.conv_clamp)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class StyleGAN2(nn.Module):
    """StyleGAN2 generator: mapping network and skip-architecture synthesis.

    ``channels`` overrides entries of :func:`standard_channels` (keys are
    resolutions), which makes tiny networks possible. With ``c_dim > 0`` the
    mapping is class-conditional: ``embed(c)`` (``embed_dim`` wide) is
    normalised like z and concatenated to it before the MLP. ``z_dim`` and
    ``embed_dim`` default to ``style_dim``. ``conv_clamp`` clamps every
    synthesis layer's output and every to-RGB output to +-conv_clamp, as
    NVIDIA's ADA-trained networks do.
    """

    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        channels: Mapping[int, int] | None = None,
        c_dim: int = 0,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        lr_mlp: float = 0.01,
        conv_clamp: float | None = None,
        z_dim: int | None = None,
        embed_dim: int | None = None,
    ):
        super().__init__()
        log_size = int(math.log2(size)) if size > 0 else 0
        if size < 8 or size > MAX_SIZE or 2**log_size != size:
            raise ValueError(
                f"size must be a power of two from 8 to {MAX_SIZE}, got {size}"
            )
        if conv_clamp is not None and not conv_clamp > 0:
            raise ValueError(f"conv_clamp must be > 0 or None, got {conv_clamp}")
        if not 1 <= len(blur_kernel) <= MAX_TAPS:
            raise ValueError(f"blur_kernel must have 1 to {MAX_TAPS} taps")
        table = standard_channels(channel_multiplier)
        table.update({int(r): int(c) for r, c in (channels or {}).items()})
        dims = {"style_dim": style_dim, "n_mlp": n_mlp, "z_dim": z_dim}
        dims["embed_dim"] = embed_dim
        for i in range(2, log_size + 1):
            dims[f"channels at {2**i} px"] = table[2**i]
        for name, value in dims.items():
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if c_dim < 0:
            raise ValueError(f"c_dim must be >= 0, got {c_dim}")
        self.size = size
        self.log_size = log_size
        self.style_dim = style_dim
        self.z_dim = z_dim or style_dim
        self.embed_dim = (embed_dim or style_dim) if c_dim > 0 else 0
        self.n_mlp = n_mlp
        self.c_dim = c_dim
        self.lr_mlp = lr_mlp
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.blur_kernel = tuple(blur_kernel)
        self.channels = {2**i: table[2**i] for i in range(2, log_size + 1)}
        self.n_latent = log_size * 2 - 2
        self.num_layers = (log_size - 2) * 2 + 1

        # Mapping network; style.0 is the pixel norm (no parameters).
        if c_dim > 0:
            self.embed = EqualLinear(c_dim, self.embed_dim)
        in_dim = self.z_dim + self.embed_dim
        mlp: list[nn.Module] = [PixelNorm()]
        for i in range(n_mlp):
            dim = in_dim if i == 0 else style_dim
            mlp.append(EqualLinear(dim, style_dim, lr_mul=lr_mlp, activation=True))
        self.style = nn.Sequential(*mlp)

        # Synthesis network.
        ch = self.channels
        opts = {"blur_kernel": blur_kernel, "conv_clamp": self.conv_clamp}
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], style_dim, **opts)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False, **opts)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_ch = ch[4]
        for i in range(3, log_size + 1):
            out_ch = ch[2**i]
            self.convs.append(
                StyledConv(in_ch, out_ch, style_dim, upsample=True, **opts)
            )
            self.convs.append(StyledConv(out_ch, out_ch, style_dim, **opts))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, **opts))
            in_ch = out_ch

    # Mapping ---------------------------------------------------------------

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None):
        """``z`` (N, z_dim), ``c`` (N, c_dim) one-hot or ``None`` -> w (N, D)."""
        x = self.style[0](z)
        if self.c_dim > 0:
            if c is None:
                raise ValueError("this generator is conditional: pass c")
            y = self.style[0](self.embed(c.to(x.dtype)))
            x = torch.cat([x, y], dim=1)  # (N, 2D)
        elif c is not None:
            raise ValueError("this generator is unconditional: c must be None")
        for layer in self.style[1:]:
            x = layer(x)
        return x

    @torch.no_grad()
    def mean_latent(
        self,
        n: int = 4096,
        c: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Average w of ``n`` random z: ``(D,)``.

        For a conditional net, ``c`` is one (c_dim,) one-hot for all samples,
        an (n, c_dim) batch, or ``None`` for classes drawn uniformly.
        """
        device = self.input.input.device
        gdev = generator.device if generator is not None else "cpu"
        z = torch.randn(n, self.z_dim, generator=generator, device=gdev)
        if self.c_dim > 0:
            if c is None:
                idx = torch.randint(self.c_dim, (n,), generator=generator, device=gdev)
                c = F.one_hot(idx, self.c_dim).float()
            c = c.to(device).float().reshape(-1, self.c_dim).expand(n, -1)
        return self.mapping(z.to(device), c).mean(dim=0)

    # Synthesis -------------------------------------------------------------

    def styled_convs(self) -> list[tuple[str, StyledConv]]:
        """The synthesis layers in forward order, with their module names."""
        names = ["conv1"] + [f"convs.{i}" for i in range(len(self.convs))]
        return list(zip(names, [self.conv1, *self.convs]))

    def _noise(self, i: int, x: torch.Tensor, noise_mode: str):
        """Noise for styled conv ``i``, whose input is ``x``."""
        if noise_mode == "const":
            return getattr(self.noises, f"noise_{i}").to(x.dtype)
        if noise_mode == "random":
            res = 2 ** ((i + 5) // 2)  # the output resolution of conv i
            shape = (x.shape[0], 1, res, res)
            return torch.randn(shape, device=x.device, dtype=x.dtype)
        if noise_mode == "none":
            return None
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}")

    def _broadcast(self, ws: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` or ``(N, L, D)`` -> ``(N, L, D)``."""
        if ws.ndim == 2:
            ws = ws.unsqueeze(1).expand(-1, self.n_latent, -1)
        if ws.ndim != 3 or ws.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(
                f"ws must be (N, {self.n_latent}, {self.style_dim}) or "
                f"(N, {self.style_dim}), got {tuple(ws.shape)}"
            )
        return ws

    def features(
        self, ws: torch.Tensor, index: int, noise_mode: str = "const"
    ) -> torch.Tensor:
        """Output of styled conv ``index`` (forward order); nothing after it.

        No to-RGB layer runs, nor any conv past ``index``.
        """
        ws = self._broadcast(ws)
        layers = self.styled_convs()
        if not 0 <= index < len(layers):
            raise IndexError(f"index {index} out of range 0..{len(layers) - 1}")
        x = self.input(ws.shape[0])  # (N, C4, 4, 4)
        for i, (_, layer) in enumerate(layers[: index + 1]):
            x = layer(x, ws[:, i], self._noise(i, x, noise_mode))
        return x

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const"):
        """``ws`` (N, L, D) or (N, D) -> images (N, 3, H, W), about [-1, 1]."""
        ws = self._broadcast(ws)
        x = self.input(ws.shape[0])  # (N, C4, 4, 4)
        x = self.conv1(x, ws[:, 0], self._noise(0, x, noise_mode))
        skip = self.to_rgb1(x, ws[:, 1])  # (N, 3, 4, 4)
        for j, to_rgb in enumerate(self.to_rgbs):
            up, conv = self.convs[2 * j], self.convs[2 * j + 1]
            x = up(x, ws[:, 2 * j + 1], self._noise(2 * j + 1, x, noise_mode))
            x = conv(x, ws[:, 2 * j + 2], self._noise(2 * j + 2, x, noise_mode))
            skip = to_rgb(x, ws[:, 2 * j + 3], skip)  # (N, 3, 2H, 2W)
        return skip

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation: float = 1.0,
        truncation_latent: torch.Tensor | None = None,
        noise_mode: str = "const",
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """z (N, z_dim) -> images (N, 3, H, W), with optional truncation.

        ``truncation_cutoff`` truncates only the first that many of the L
        per-layer codes (NVIDIA's ``truncation_cutoff``); None: all.
        """
        w = self.mapping(z, c)
        if truncation != 1.0:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent")
            w = truncate(w, truncation_latent, truncation, truncation_cutoff, self)
        return self.synthesis(w, noise_mode=noise_mode)


def truncate(
    w: torch.Tensor,
    avg: torch.Tensor,
    psi: float,
    cutoff: int | None,
    model: StyleGAN2,
) -> torch.Tensor:
    """Pull w towards ``avg`` by psi: all codes, or the first ``cutoff``.

    ``w`` is (N, D) or (N, L, D); with a cutoff below L the result is
    (N, L, D), the codes from ``cutoff`` on left as they were.
    """
    if cutoff is None or cutoff >= model.n_latent:
        return avg + psi * (w - avg)
    ws = model._broadcast(w).clone()  # (N, L, D)
    ws[:, :cutoff] = avg + psi * (ws[:, :cutoff] - avg)
    return ws
