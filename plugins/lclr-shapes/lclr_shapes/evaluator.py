"""The ``shapes`` evaluator: how well a run's directions recover the known
factors of the shapes world.

For each direction k and each sign of the edit strength α, the evaluator
edits ``samples`` latent codes, synthesises the images before and after,
reads the factors off both with the factor predictor, and averages the
absolute change of every factor over the samples and the two signs:

- a linear factor (x, y, scale, background): ``|after - before| / range``;
- a circular factor (rotation, hue): the angular change, at most half a
  turn, divided by half a turn (``|Δangle| / pi``);
- the shape class: the rate at which the predicted class flips.

Every entry is thus in ``[0, 1]``; together they form the K × F change
matrix ``M`` (F = 7 factors). From it:

- ``share[k, f] = M[k, f] / sum_f M[k, f]``: the part of direction k's
  total change that falls on factor f. A direction's **dominant factor** is
  the one with the largest share, and its **purity** that largest share.
- ``effect[k, f] = min(1, M[k, f] / reference)``: how visible the change
  is, in full from a mean change of ``reference`` (0.25 by default: a
  quarter of a linear range, 45 degrees, one flip in four).
- For each factor, the **best direction** is the one with the largest
  ``share[k, f] * effect[k, f]``, and that product is the factor's score.
- The overall **score** is the mean of the factor scores over all F factors.

It lies in ``[0, 1]``; it is 1 only when every factor has its own direction
that changes that factor visibly and nothing else; a direction changing
two factors equally gives each at most 1/2; a set of directions that all
move the same factor scores at most 1/F. The same measure is reported for
K random directions of norm α (``random_baseline`` sets of them), the
baseline a learnt set has to beat.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lclr.errors import ConfigError
from lclr.interfaces import Evaluator
from lclr_shapes.options import ShapesEvalOptions
from lclr_shapes.render import FACTORS

logger = logging.getLogger(__name__)

__all__ = [
    "FACTOR_NAMES",
    "ShapesEvaluator",
    "factor_changes",
    "score_matrix",
]

FACTOR_NAMES = [spec.name for spec in FACTORS]
"""Columns of the change matrix, ``shape`` first."""


def factor_changes(
    before: dict[str, Tensor], after: dict[str, Tensor], tolerance: float = 0.0
) -> Tensor:
    """``(N, F)`` per-sample changes between two predictions, in ``[0, 1]``.

    A continuous change at most ``tolerance`` counts as none, and larger ones
    are reduced by it, so the predictor's own jitter is not read as change.
    """
    cols = []
    for spec in FACTORS:
        a, b = after[spec.name], before[spec.name]
        if spec.kind == "categorical":
            cols.append((a != b).float())
            continue
        if spec.kind == "linear":
            d = (a - b).abs().float() / spec.span
        else:
            d = torch.remainder(a - b, spec.span)
            d = torch.minimum(d, spec.span - d).float() / (spec.span / 2)
        cols.append((d - tolerance).clamp(min=0.0))
    return torch.stack(cols, dim=1).clamp(0.0, 1.0)


def score_matrix(matrix: Tensor, reference: float = 0.25) -> dict[str, Any]:
    """Purity, best directions and the overall score of a ``(K, F)``
    change matrix (see the module docstring)."""
    total = matrix.sum(dim=1, keepdim=True)  # (K, 1)
    share = matrix / total.clamp(min=1e-12)
    effect = (matrix / reference).clamp(max=1.0)
    quality = share * effect  # (K, F)
    purity, dominant = share.max(dim=1)
    best_quality, best = quality.max(dim=0)  # (F,)
    return {
        "score": float(best_quality.mean()),
        "share": share,
        "purity": purity,
        "dominant": dominant,
        "best": best,
        "best_quality": best_quality,
        "total": total.squeeze(1),
    }


class _RandomDirections:
    """K random directions of norm alpha in a latent space of size D."""

    def __init__(self, k: int, dim: int, seed: int, device: torch.device):
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(k, dim, generator=gen)
        self.k = k
        self.units = (u / u.norm(dim=1, keepdim=True)).to(device)  # (K, D)

    def edit(self, codes: Tensor, k: int, alpha: float) -> Tensor:
        """``codes`` moved by alpha along direction k."""
        return codes + alpha * self.units[k]


def _check_images(images: Tensor) -> None:
    """Only images of the shapes world can be read by its predictor."""
    if tuple(images.shape[1:]) != (3, 32, 32):
        size = "x".join(str(n) for n in images.shape[1:])
        raise ConfigError(
            f"the shapes evaluator reads 3x32x32 images of the shapes world; "
            f"this run's generator makes {size}; use another evaluator"
        )


class ShapesEvaluator(Evaluator):
    """Scores a run's directions against the shapes world's true factors."""

    def __init__(self, options: ShapesEvalOptions | None = None) -> None:
        self.options = options or ShapesEvalOptions()
        self._predictor = None

    @property
    def predictor(self):
        """The factor predictor, loaded on first use."""
        if self._predictor is None:
            from lclr_shapes.predictor import load_predictor

            self._predictor = load_predictor(self.options.predictor)
        return self._predictor

    @torch.no_grad()
    def _read(self, run: Any, codes: Tensor, k: int | None, alpha: float):
        """Predicted factors of ``codes`` (edited by direction k if given)."""
        parts = []
        bs = self.options.batch_size
        for start in range(0, codes.shape[0], bs):
            batch = codes[start : start + bs]
            if k is not None:
                batch = run.edit(batch, k, alpha)
            images = run.generator.synthesize(batch).float().cpu()
            _check_images(images)
            parts.append(self.predictor.predict(images))
        return {name: torch.cat([p[name] for p in parts]) for name in FACTOR_NAMES}

    def change_matrix(
        self, run: Any, alpha: float, base: tuple[Tensor, dict] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(K, F)`` mean changes at ``+alpha`` and at ``-alpha``.

        ``base`` is ``(codes, predictions)`` of the unedited samples, drawn
        here when not given.
        """
        opts = self.options
        if base is None:
            codes = run.generator.sample_latent(opts.samples, seed=opts.seed)
            base = (codes, self._read(run, codes, None, alpha))
        codes, before = base
        plus, minus = [], []
        for k in range(run.directions.k):
            for sign, rows in ((1.0, plus), (-1.0, minus)):
                after = self._read(run, codes, k, sign * alpha)
                change = factor_changes(before, after, opts.tolerance)
                rows.append(change.mean(dim=0))
            logger.debug("direction %d: %s", k, plus[-1].tolist())
        return torch.stack(plus), torch.stack(minus)

    def random_score(
        self, run: Any, alpha: float, seed: int, base: tuple[Tensor, dict]
    ) -> float:
        """The score of K random directions of norm ``alpha``."""
        codes = base[0]
        fake = copy.copy(run)
        fake.directions = _RandomDirections(
            run.directions.k, codes.shape[-1], seed, codes.device
        )
        plus, minus = self.change_matrix(fake, alpha, base)
        return score_matrix(0.5 * (plus + minus), self.options.reference)["score"]

    def evaluate(self, run: Any, out_dir: Any) -> dict[str, Any]:
        """Measure ``run``, write ``eval.json`` and ``heatmap.png`` into
        ``out_dir`` and return the summary (its ``score`` in [0, 1])."""
        opts = self.options
        alpha = float(opts.alpha if opts.alpha is not None else run.config.alpha)
        codes = run.generator.sample_latent(opts.samples, seed=opts.seed)
        base = (codes, self._read(run, codes, None, alpha))
        plus, minus = self.change_matrix(run, alpha, base)
        matrix = 0.5 * (plus + minus)  # (K, F)
        scored = score_matrix(matrix, opts.reference)
        randoms = [
            self.random_score(run, alpha, 1000 + i, base)
            for i in range(opts.random_baseline)
        ]
        summary = _summary(matrix, plus, minus, scored, randoms)
        summary.update(
            alpha=alpha,
            samples=opts.samples,
            seed=opts.seed,
            reference=opts.reference,
            tolerance=opts.tolerance,
        )
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot_heatmap(
            matrix,
            scored,
            out / "heatmap.png",
            alpha=alpha,
            random_score=summary.get("random_score"),
        )
        summary["heatmap"] = "heatmap.png"
        summary["lines"] = _lines(summary)
        (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _rows(t: Tensor) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in t]


def _summary(matrix, plus, minus, scored, randoms) -> dict[str, Any]:
    directions = []
    for k in range(matrix.shape[0]):
        directions.append(
            {
                "direction": k,
                "dominant": FACTOR_NAMES[int(scored["dominant"][k])],
                "purity": float(scored["purity"][k]),
                "total_change": float(scored["total"][k]),
            }
        )
    best = {}
    for f, name in enumerate(FACTOR_NAMES):
        k = int(scored["best"][f])
        best[name] = {
            "direction": k,
            "score": float(scored["best_quality"][f]),
            "change": float(matrix[k, f]),
            "share": float(scored["share"][k, f]),
        }
    summary: dict[str, Any] = {
        "score": scored["score"],
        "factors": FACTOR_NAMES,
        "matrix": _rows(matrix),
        "matrix_plus": _rows(plus),
        "matrix_minus": _rows(minus),
        "directions": directions,
        "best_direction": best,
    }
    if randoms:
        summary["random_scores"] = randoms
        summary["random_score"] = sum(randoms) / len(randoms)
    return summary


def _lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    if "random_score" in summary:
        lines.append(
            f"random:      {summary['random_score']:.3f} (K random directions)"
        )
    for d in summary["directions"]:
        lines.append(
            f"direction {d['direction']:>2}: {d['dominant']:<10} "
            f"purity {d['purity']:.2f}, change {d['total_change']:.3f}"
        )
    return lines


def plot_heatmap(
    matrix: Tensor,
    scored: dict[str, Any],
    path: Path,
    alpha: float,
    random_score: float | None = None,
) -> None:
    """The K × F change matrix as an annotated heat map (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k, f = matrix.shape
    fig = Figure(figsize=(1.1 * f + 2.0, 0.45 * k + 1.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(matrix.numpy(), cmap="viridis", vmin=0.0, aspect="auto")
    ax.set_xticks(range(f), FACTOR_NAMES, rotation=30, ha="right")
    labels = [
        f"{i}: {FACTOR_NAMES[int(scored['dominant'][i])]} "
        f"({float(scored['purity'][i]):.2f})"
        for i in range(k)
    ]
    ax.set_yticks(range(k), labels)
    top = float(matrix.max()) if matrix.numel() else 1.0
    for i in range(k):
        for j in range(f):
            v = float(matrix[i, j])
            colour = "black" if v > 0.6 * top else "white"
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color=colour, size=8)
    ax.set_xlabel("factor (mean change; class: flip rate)")
    ax.set_ylabel("direction: dominant (purity)")
    title = f"shapes evaluation, alpha {alpha:g}: score {scored['score']:.3f}"
    if random_score is not None:
        title += f" (random directions {random_score:.3f})"
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
