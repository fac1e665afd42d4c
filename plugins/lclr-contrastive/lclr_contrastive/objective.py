"""The LatentCLR contrastive objective.

For K directions and N samples the feature changes f_i^k (a ``(K, N, F)``
tensor) are compared by cosine similarity. For each (i, k)::

    l(i, k) = -log [ sum_{j != i} exp(sim(f_i^k, f_j^k) / tau)
                   / sum_j sum_{l != k} exp(sim(f_i^k, f_j^l) / tau) ]

and the loss is the mean of l over all i, k. Positives: the same direction
on the other samples; negatives: every other direction on every sample.

The whole loss is one ``(KN, KN)`` similarity matrix with masks, reduced by
log-sum-exp (never a raw exp), in float32 even for half-precision inputs, so
it stays finite for tau down to 0.05 and below.

The authors' released code differs from the paper; each difference is an
option (see :class:`LatentCLROptions`), and ``variant="authors"`` sets all of
them at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from lclr.errors import ConfigError
from lclr.interfaces import Objective
from lclr_contrastive.gram import cosine_gram
from lclr_contrastive.options import VARIANTS, LatentCLROptions

__all__ = [
    "VARIANTS",
    "FeatureChangeError",
    "LatentCLR",
    "LatentCLROptions",
    "latentclr_loss",
]

log = logging.getLogger(__name__)


class FeatureChangeError(ConfigError):
    """A feature change that the loss cannot use: all zeros, NaN or inf."""


# The loss -------------------------------------------------------------


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # float32 for half inputs, float64 stays float64
    return torch.promote_types(x.dtype, torch.float32)


def _unit_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``(M, F)`` scaled to unit length, and a ``(M,)`` zero-row mask.

    Each row is first divided by its largest magnitude (a constant for the
    gradient: the result does not depend on it), so tiny rows neither
    underflow nor lose precision. Zero rows stay zero and pass no gradient.
    """
    scale = x.detach().abs().amax(dim=1, keepdim=True)  # (M, 1)
    zero = scale == 0
    x = x / torch.where(zero, 1.0, scale)
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (M, 1)
    unit = x / torch.where(zero, 1.0, norm)
    unit = torch.where(zero, 0.0, unit)
    return unit, zero.squeeze(1)


def latentclr_loss(
    changes: torch.Tensor,
    *,
    temperature: float = 0.5,
    similarity: str = "cosine",
    temperature_mode: str = "divide",
    reduction: str = "sum",
    zero_change: str = "error",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The LatentCLR loss of ``(K, N, F)`` feature changes (or ``(K, N, ...)``).

    Returns the scalar loss (float32, or float64 for float64 input) and a
    dict of detached 0-d statistics: ``acc``, ``ratio_acc``, ``pos_sim``,
    ``neg_sim`` (see :meth:`LatentCLR.__call__`). Raises ConfigError when
    K < 2 or N < 2, FeatureChangeError on a non-finite change or (with
    ``zero_change="error"``) a change that is all zeros.
    """
    if changes.ndim < 3:
        raise ValueError(
            f"feature changes must be (K, N, F), got {tuple(changes.shape)}"
        )
    if not changes.is_floating_point():
        raise ValueError(f"feature changes must be floating point, not {changes.dtype}")
    k, n = changes.shape[:2]
    if k < 2:
        raise ConfigError(
            f"the LatentCLR loss needs K >= 2 directions, got {k}; use -k 2 or more"
        )
    if n < 2:
        raise ConfigError(
            f"the LatentCLR loss needs a batch of N >= 2 samples, got {n}; "
            "use --batch-size 2 or more"
        )

    # Rows in direction-major order: row k*N + i is f_i^k
    m = k * n
    x = changes.reshape(m, -1).to(_compute_dtype(changes))  # (KN, F)
    if not bool(torch.isfinite(x).all()):
        raise FeatureChangeError(
            "feature changes contain NaN or inf; lower the learning rate or alpha, "
            "or run the generator in float32"
        )
    sim, zero = cosine_gram(x)  # (KN, KN), (KN,)
    if zero_change == "error" and bool(zero.any()):
        row = int(zero.nonzero()[0, 0])
        raise FeatureChangeError(
            f"direction {row // n} left sample {row % n}'s features unchanged; "
            "pick a target layer after the edited layers, raise alpha, "
            "or set the objective's zero_change='guard'"
        )

    # The (KN, KN) similarity matrix and the masks of positives / negatives
    if similarity == "abs_cosine":
        sim = sim.abs()
    # the paper divides by tau; the authors' release multiplies
    scale = 1.0 / temperature if temperature_mode == "divide" else temperature
    logits = sim * scale
    direction = torch.arange(k, device=x.device).repeat_interleave(n)  # (KN,)
    same = direction[:, None] == direction[None, :]
    self_pair = torch.eye(m, dtype=torch.bool, device=x.device)
    positive = same & ~self_pair
    negative = ~same

    # l = -(log sum_pos exp - log sum_neg exp), by log-sum-exp per row
    lse_pos = torch.logsumexp(logits.masked_fill(~positive, -math.inf), dim=1)
    lse_neg = torch.logsumexp(logits.masked_fill(~negative, -math.inf), dim=1)
    if reduction == "mean":
        lse_pos = lse_pos - math.log(n - 1)
        lse_neg = lse_neg - math.log((k - 1) * n)
    row_loss = lse_neg - lse_pos  # (KN,)
    loss = row_loss.mean()

    with torch.no_grad():
        nearest = sim.masked_fill(self_pair, -math.inf).argmax(dim=1)  # (KN,)
        stats = {
            "acc": same[torch.arange(m, device=x.device), nearest].float().mean(),
            "ratio_acc": (row_loss < 0).float().mean(),
            "pos_sim": sim[positive].mean(),
            "neg_sim": sim[negative].mean(),
        }
    return loss, stats


# The objective --------------------------------------------------------


class LatentCLR(Objective):
    """The LatentCLR objective, configured by :class:`LatentCLROptions`.

    With ``projector="mlp"`` it owns a trainable head: call :meth:`setup`
    with the feature size F before asking for :meth:`parameters` (the
    trainer knows F from the generator's layer shape), and save it with
    :meth:`state_dict`.
    """

    def __init__(self, options: LatentCLROptions | None = None):
        self.options = options or LatentCLROptions()
        self.head: nn.Module | None = None
        self._head_in = 0

    # The projector head -----------------------------------------------

    def setup(self, feature_dim: int, device: torch.device | str | None = None):
        """Build the ``mlp`` head for F = ``feature_dim`` (a no-op otherwise).

        Its weights come from torch's global RNG, so a seeded run is
        reproducible. Calling it again with the same F keeps the head.
        """
        if self.options.projector != "mlp":
            return
        if self.head is not None and self._head_in == feature_dim:
            return
        self.head = _make_head(feature_dim, self.options).to(device)
        self._head_in = feature_dim

    def parameters(self) -> Sequence[nn.Parameter]:
        """The ``mlp`` head's parameters; none for the other projectors."""
        if self.options.projector != "mlp":
            return []
        if self.head is None:
            raise RuntimeError(
                "projector='mlp' has no parameters yet; call setup(feature_dim) first"
            )
        return list(self.head.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The head's tensors (empty without an ``mlp`` head)."""
        return {} if self.head is None else self.head.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the head from :meth:`state_dict` (after :meth:`setup`)."""
        if self.head is None:
            if state:
                raise RuntimeError("call setup(feature_dim) before load_state_dict")
            return
        self.head.load_state_dict(state)

    def to(self, device: torch.device | str) -> LatentCLR:
        """Move the head (if any) to ``device``; returns self."""
        if self.head is not None:
            self.head.to(device)
        return self

    def train(self, mode: bool = True) -> LatentCLR:
        """Training mode of the head's batch norms; returns self."""
        if self.head is not None:
            self.head.train(mode)
        return self

    def transform_features(self, features: torch.Tensor) -> torch.Tensor:
        """``(M, ...)`` raw features to what differences are taken of.

        ``none``: unchanged. ``normalize``: each flattened row at unit
        length, in float32 (float64 stays). ``mlp``: the head, then unit
        length.
        """
        projector = self.options.projector
        if projector == "none":
            return features
        x = features.reshape(features.shape[0], -1)  # (M, F)
        x = x.to(_compute_dtype(x))
        if projector == "mlp":
            if self.head is None:
                log.debug("building the projector head for F=%d", x.shape[1])
                self.setup(x.shape[1], x.device)
            x = self.head(x.to(next(self.head.parameters()).dtype))  # (M, out)
        return _unit_rows(x)[0]

    # The loss ---------------------------------------------------------

    def __call__(self, changes: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss and metrics of ``(K, N, F)`` feature changes.

        Metrics, plain floats:

        - ``acc``: contrastive accuracy, the share of the K*N changes whose
          most similar other change (in the loss's similarity) comes from
          the same direction. Chance is about (N-1)/(KN-1).
        - ``ratio_acc``: the share of (i, k) whose positive term beats the
          negative term, i.e. l(i, k) < 0 (the authors' accuracy).
        - ``pos_sim`` / ``neg_sim``: mean similarity (|cos| under
          ``abs_cosine``) over positive / negative pairs.
        """
        o = self.options
        loss, stats = latentclr_loss(
            changes,
            temperature=o.temperature,
            similarity=o.similarity,
            temperature_mode=o.temperature_mode,
            reduction=o.reduction,
            zero_change=o.zero_change,
        )
        names = list(stats)
        values = torch.stack([stats[name] for name in names]).tolist()
        return loss, dict(zip(names, values, strict=True))


def _make_head(in_features: int, options: LatentCLROptions) -> nn.Sequential:
    """The authors' projector MLP, written afresh: Linear, then (batch norm,
    ReLU, Linear) per extra layer; the last Linear has no bias, except a
    single-layer head, which has one and a final batch norm instead."""
    depth = options.projector_depth
    sizes = [in_features] + [options.projector_hidden] * (depth - 1)
    sizes.append(options.projector_out)
    layers: list[nn.Module] = []
    for i in range(depth):
        last = i == depth - 1
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=depth == 1 or not last))
        if not last:
            if options.projector_batchnorm:
                layers.append(nn.BatchNorm1d(sizes[i + 1]))
            layers.append(nn.ReLU())
    if depth == 1 and options.projector_batchnorm:
        layers.append(nn.BatchNorm1d(sizes[-1]))
    return nn.Sequential(*layers)
