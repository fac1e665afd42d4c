"""The three LatentCLR direction models: global, linear and nonlinear.

Each holds K directions in a latent space of size D and edits a code z by
``z + alpha * u / |u|``, so that every edit has norm exactly ``|alpha|``:

- global: ``u = theta_k``, one free vector per direction (independent of z);
- linear: ``u = M_k z`` (``+ b_k`` with ``bias=True``), one D x D matrix per
  direction;
- nonlinear: ``u = NN_k(z)``, one small MLP per direction.

All K directions are computed in one batched operation over K (a batched
matmul), never a Python loop over directions. Parameters are initialised
from torch's global RNG when the model is built, so a seeded trainer gets
the same model every time.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import nn
from torch.nn import functional as F

from lclr.errors import ConfigError
from lclr.interfaces import DirectionModel
from lclr_directions.options import GlobalOptions, LinearOptions, NonlinearOptions

__all__ = [
    "GlobalDirections",
    "GlobalOptions",
    "LinearDirections",
    "LinearOptions",
    "NonlinearDirections",
    "NonlinearOptions",
]


# The shared machinery -------------------------------------------------


class _UnitEdits(DirectionModel):
    """Common code: alpha handling, normalisation, single-direction edits.

    A subclass implements :meth:`_raw`, the un-normalised directions u for
    the directions selected by a slice of the K axis.
    """

    def __init__(self, k: int, latent_dim: int, eps: float):
        super().__init__()
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"K must be a positive integer, got {k!r}")
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ConfigError(
                f"latent size must be a positive integer, got {latent_dim!r}"
            )
        self.k = k
        self.latent_dim = latent_dim
        self.eps = eps

    def _raw(self, codes: torch.Tensor, index: slice) -> torch.Tensor:
        """Un-normalised directions ``(K', N, D)`` for ``directions[index]``."""
        raise NotImplementedError

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.ndim != 2 or codes.shape[1] != self.latent_dim:
            raise ValueError(
                f"codes must be (N, {self.latent_dim}), got {tuple(codes.shape)}"
            )

    def _unit(self, u: torch.Tensor) -> torch.Tensor:
        # u / |u| along the last axis; where |u| <= eps, zero (no edit, no
        # gradient) instead of NaN
        norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        unit = u / norm.clamp_min(self.eps)
        return torch.where(norm > self.eps, unit, torch.zeros_like(unit))

    def directions(self, codes: torch.Tensor) -> torch.Tensor:
        """Unit directions u/|u| at each code: ``(K, N, D)``."""
        self._check_codes(codes)
        return self._unit(self._raw(codes, slice(None)))

    def forward(self, codes: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        """All K edits ``z + alpha * u/|u|`` of ``(N, D)`` codes: ``(K, N, D)``.

        ``alpha``: a float, or a ``(N,)`` (one step per sample) or ``(K, N)``
        tensor (one per edit).
        """
        self._check_codes(codes)
        n = codes.shape[0]
        unit = self._unit(self._raw(codes, slice(None)))  # (K, N, D)
        step = _alpha(alpha, (self.k, n), unit)  # broadcasts to (K, N, 1)
        return codes.unsqueeze(0) + step * unit

    def edit(
        self, codes: torch.Tensor, k: int, alpha: float | torch.Tensor
    ) -> torch.Tensor:
        """``(N, D)`` codes moved by direction ``k`` alone, by ``alpha``.

        ``alpha`` is a float or a ``(N,)`` tensor; negative moves back.
        """
        self._check_codes(codes)
        k = operator.index(k)
        if not 0 <= k < self.k:
            raise ValueError(f"direction {k} out of range; this model has K={self.k}")
        n = codes.shape[0]
        unit = self._unit(self._raw(codes, slice(k, k + 1)))[0]  # (N, D)
        step = _alpha(alpha, (n,), unit)  # broadcasts to (N, 1)
        return codes + step * unit

    def extra_repr(self) -> str:
        """K and D, for ``print(model)``."""
        return f"k={self.k}, latent_dim={self.latent_dim}"


def _alpha(alpha, shape: tuple[int, ...], like: torch.Tensor):
    """``alpha`` shaped to broadcast against ``like`` (``shape + (D,)``).

    A float (or 0-d tensor) applies everywhere; a tensor of shape ``(N,)``
    applies per sample; one of ``shape`` per element.
    """
    if not isinstance(alpha, torch.Tensor):
        return float(alpha)
    alpha = alpha.to(device=like.device, dtype=like.dtype)
    if alpha.ndim == 0:
        return alpha
    if tuple(alpha.shape) == shape:
        return alpha.unsqueeze(-1)
    if alpha.ndim == 1 and alpha.shape[0] == shape[-1]:
        return alpha.view(*([1] * (len(shape) - 1)), -1, 1)
    want = f"({shape[-1]},)" if len(shape) == 1 else f"({shape[-1]},) or {shape}"
    raise ValueError(
        f"alpha must be a float or a tensor of shape {want}, got {tuple(alpha.shape)}"
    )


def _uniform(shape: tuple[int, ...], bound: float) -> torch.Tensor:
    # U(-bound, bound) from the global RNG
    return (torch.rand(shape) * 2 - 1) * bound


# The models -----------------------------------------------------------


class GlobalDirections(_UnitEdits):
    """K fixed directions: ``delta z = alpha * theta_k / |theta_k|``.

    Parameter ``theta``: ``(K, D)``. The edit does not depend on z.
    """

    def __init__(self, k: int, latent_dim: int, options: GlobalOptions | None = None):
        options = options or GlobalOptions()
        super().__init__(k, latent_dim, options.eps)
        self.options = options
        self.theta = nn.Parameter(torch.randn(k, latent_dim) * options.init_scale)

    def _raw(self, codes: torch.Tensor, index: slice) -> torch.Tensor:
        theta = self.theta[index]  # (K', D)
        n = codes.shape[0]
        return theta.unsqueeze(1).expand(-1, n, -1)  # (K', N, D)


class LinearDirections(_UnitEdits):
    """K linear directions: ``delta z = alpha * M_k z / |M_k z|``.

    Parameters ``weight``: ``(K, D, D)``; ``bias``: ``(K, D)`` when
    ``options.bias`` (then ``u = M_k z + b_k``).
    """

    def __init__(self, k: int, latent_dim: int, options: LinearOptions | None = None):
        options = options or LinearOptions()
        super().__init__(k, latent_dim, options.eps)
        self.options = options
        bound = options.init_scale / math.sqrt(latent_dim)
        d = latent_dim
        self.weight = nn.Parameter(_uniform((k, d, d), bound))
        if options.bias:
            self.bias = nn.Parameter(_uniform((k, d), bound))
        else:
            self.register_parameter("bias", None)

    def _raw(self, codes: torch.Tensor, index: slice) -> torch.Tensor:
        z = codes.to(self.weight.dtype)
        # (N, D) @ (K', D, D)^T -> (K', N, D): one batched matmul
        u = torch.matmul(z, self.weight[index].transpose(1, 2))
        if self.bias is not None:
            u = u + self.bias[index].unsqueeze(1)
        return u


class NonlinearDirections(_UnitEdits):
    """K nonlinear directions: ``delta z = alpha * NN_k(z) / |NN_k(z)|``.

    Each NN_k is an MLP of ``depth`` linear layers, ReLU between them
    (batch-normalised first with ``batchnorm``). The K MLPs are stored
    stacked, layer ``i`` as ``weights.i``: ``(K, out, in)`` and
    ``biases.i``: ``(K, out)``, and run as one batched matmul per layer.
    """

    def __init__(
        self, k: int, latent_dim: int, options: NonlinearOptions | None = None
    ):
        options = options or NonlinearOptions()
        super().__init__(k, latent_dim, options.eps)
        self.options = options
        hidden = options.hidden or latent_dim
        sizes = [latent_dim] + [hidden] * (options.depth - 1) + [latent_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norms = nn.ModuleList()
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = options.init_scale / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(_uniform((k, fan_out, fan_in), bound)))
            last = i == options.depth - 1
            if options.bias and not last:
                self.biases.append(nn.Parameter(_uniform((k, fan_out), bound)))
            if options.batchnorm and not last:
                self.norms.append(_StackedBatchNorm(k, fan_out))

    def _raw(self, codes: torch.Tensor, index: slice) -> torch.Tensor:
        h = codes.to(self.weights[0].dtype)  # (N, D)
        depth = len(self.weights)
        for i, weight in enumerate(self.weights):
            # (N, in) or (K', N, in) @ (K', in, out) -> (K', N, out)
            h = torch.matmul(h, weight[index].transpose(1, 2))
            if i == depth - 1:
                break
            if len(self.biases):
                h = h + self.biases[i][index].unsqueeze(1)
            if len(self.norms):
                h = self.norms[i](h, index)
            h = F.relu(h)
        return h


class _StackedBatchNorm(nn.Module):
    """Batch norm with separate statistics per direction, over ``(K, N, C)``.

    Normalises each (k, c) over the N samples (running averages in eval
    mode), with an affine scale and shift per (k, c).
    """

    def __init__(self, k: int, channels: int, momentum: float = 0.1):
        super().__init__()
        self.k, self.channels, self.momentum = k, channels, momentum
        self.weight = nn.Parameter(torch.ones(k, channels))
        self.bias = nn.Parameter(torch.zeros(k, channels))
        self.register_buffer("running_mean", torch.zeros(k, channels))
        self.register_buffer("running_var", torch.ones(k, channels))

    def forward(self, h: torch.Tensor, index: slice) -> torch.Tensor:
        """``h``: ``(K', N, C)`` for ``directions[index]``; same shape out."""
        kk, n, c = h.shape
        flat = h.transpose(0, 1).reshape(n, kk * c)  # (N, K' * C)
        # views into the buffers, so running stats update in place
        mean = self.running_mean[index].view(-1)
        var = self.running_var[index].view(-1)
        out = F.batch_norm(
            flat,
            mean,
            var,
            self.weight[index].reshape(-1),
            self.bias[index].reshape(-1),
            training=self.training,
            momentum=self.momentum,
        )
        return out.view(n, kk, c).transpose(0, 1)  # (K', N, C)
