"""The quality bar a generator of the shapes world must pass.

Measured with the factor predictor on ``n`` samples (1,000 by default):

1. **Good samples**: at least 70 % of the samples are *good*: the predictor
   gives its most probable shape a probability of at least 0.9, AND a clean
   re-render from the factors read off the sample matches it: the relative
   error ``|x - r| / |x - mean(x)|`` is at most :data:`ERROR_BOUND`, where
   ``x`` is the sample, ``r`` the re-render, ``mean(x)`` the sample's mean
   colour and the norms run over all pixels and channels. The factors are
   the predictor's, refined by a few gradient steps of the renderer so that
   ``r`` is the best clean render near them (the renderer is differentiable
   in every continuous factor; the shape stays the predicted one).
   Confidence alone is no evidence: the predictor is confident on pure
   noise too; the re-render check is what rejects noise and blends.
2. **Classes**: every shape class is the predicted one for between
   ``0.6 / C`` and ``1.4 / C`` of all samples (C classes), so a generator
   that draws one shape well fails.
3. **Coverage**: among the good samples, the predicted value of every
   continuous factor falls in each tenth of its range at least once.
4. **Fréchet distance** between the predictor's 128-d features of the
   samples and of ``n`` real renders, shown beside the same distance for a
   second batch of real renders (the floor) and for Gaussian noise. It
   passes when it is below the geometric mean of the floor and the noise
   figure, i.e. closer to real than to noise on a log scale.

Overall, the generator passes when all four pass. :func:`measure_quality`
returns everything as a JSON-able dict; ``lclr shapes quality`` prints it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lclr_shapes.render import FACTORS, SHAPES, into_range, render, sample_factors

logger = logging.getLogger(__name__)

__all__ = [
    "ERROR_BOUND",
    "frechet_distance",
    "good_samples",
    "measure_quality",
    "provenance_summary",
    "quality_of_source",
    "rerender",
    "rerender_error",
    "sample_source",
    "write_error_grid",
]

ERROR_BOUND = 0.35
"""Largest relative re-render error of a good sample."""
CONFIDENCE = 0.9
"""Smallest class probability of a good sample."""
GOOD_SHARE = 0.7
"""Smallest share of good samples that passes."""
REFINE_STEPS = 40
"""Gradient steps that refine the predicted factors before re-rendering."""
GRID_COLUMNS = 12
"""Samples per shape in the grid of :func:`write_error_grid`."""

SOURCES = ("stylegan2", "biggan", "real", "noise", "blend")
GENERATORS = ("stylegan2", "biggan")
"""Sources that are generators, read from ``weights`` or their default."""

_CONTINUOUS = [s for s in FACTORS if s.kind != "categorical"]


def good_samples(predicted: dict[str, Tensor], error: Tensor) -> Tensor:
    """``(N,)`` bool: the bar's test of each sample, read as some class
    with probability >= :data:`CONFIDENCE` (``predicted`` from the factor
    predictor) and re-rendered within :data:`ERROR_BOUND` (``error``)."""
    return (predicted["probs"].max(dim=1).values >= CONFIDENCE) & (error <= ERROR_BOUND)


# Re-rendering ----------------------------------------------------------------


def _relative_error(images: Tensor, rerender: Tensor) -> Tensor:
    """``(N,)`` values of ``|x - r| / |x - mean(x)|``."""
    centred = images - images.mean(dim=(2, 3), keepdim=True)
    num = (images - rerender).flatten(1).norm(dim=1)
    den = centred.flatten(1).norm(dim=1).clamp(min=1e-6)
    return num / den


def refine_factors(
    images: Tensor, factors: dict[str, Tensor], steps: int = REFINE_STEPS
) -> dict[str, Tensor]:
    """Adjust the continuous factors so their render fits ``images`` better.

    Adam on the squared pixel error, the shape class fixed; returns factors
    in their ranges. ``steps=0`` only cleans them.
    """
    factors = into_range(factors)
    if steps <= 0:
        return factors
    size = images.shape[-1]
    params = {
        s.name: factors[s.name].detach().clone().requires_grad_(True)
        for s in _CONTINUOUS
    }
    # step sizes in each factor's own units: about a pixel, a few degrees
    lrs = {s.name: 0.02 * s.span for s in _CONTINUOUS}
    opt = torch.optim.Adam(
        [{"params": [params[k]], "lr": lrs[k]} for k in params], betas=(0.5, 0.9)
    )
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with torch.enable_grad():
        for _ in range(steps):
            current = into_range({"shape": factors["shape"], **params})
            loss = (render(current, size) - images).square().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            decay.step()
    with torch.no_grad():
        return into_range({"shape": factors["shape"], **params})


def rerender(
    images: Tensor,
    predicted: dict[str, Tensor],
    refine_steps: int = REFINE_STEPS,
    batch_size: int = 250,
) -> tuple[Tensor, Tensor]:
    """Clean re-renders of ``images`` from the ``predicted`` factors (refined)
    and their ``(N,)`` relative errors: ``(errors, renders)``."""
    errors, renders = [], []
    for start in range(0, images.shape[0], batch_size):
        part = slice(start, start + batch_size)
        x = images[part].float()
        f = {k: predicted[k][part] for k in ["shape"] + [s.name for s in _CONTINUOUS]}
        f = refine_factors(x, f, refine_steps)
        with torch.no_grad():
            renders.append(render(f, x.shape[-1]))
            errors.append(_relative_error(x, renders[-1]))
    return torch.cat(errors), torch.cat(renders)


def rerender_error(
    images: Tensor,
    predicted: dict[str, Tensor],
    refine_steps: int = REFINE_STEPS,
    batch_size: int = 250,
) -> Tensor:
    """``(N,)`` relative errors of clean re-renders from ``predicted``."""
    return rerender(images, predicted, refine_steps, batch_size)[0]


def write_error_grid(
    path: Path,
    images: Tensor,
    renders: Tensor,
    errors: Tensor,
    shapes: Tensor,
    cols: int = GRID_COLUMNS,
    zoom: int = 3,
) -> Path:
    """A PNG of samples above their re-renders: for each predicted shape a
    pair of rows, ``cols`` of its samples from the lowest re-render error
    (left) to the highest (right), at evenly spaced ranks; the rows are
    labelled with the shape's name and "re-render"."""
    from lclr_shapes.preview import save_grid

    rows, labels = [], []
    for s in range(len(SHAPES)):
        index = torch.nonzero(shapes == s).flatten()
        index = index[errors[index].argsort()]
        if len(index) > cols:
            index = index[torch.linspace(0, len(index) - 1, cols).round().long()]
        blank = torch.ones(cols - len(index), *images.shape[1:])
        rows += [torch.cat([images[index], blank]), torch.cat([renders[index], blank])]
        labels += [SHAPES[s], "re-render"]
    return save_grid(path, torch.cat(rows).clamp(0, 1), cols, zoom, labels=labels)


# Fréchet distance ------------------------------------------------------------


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to ``(N, F)`` features.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, in
    float64, with the square roots from symmetric eigen-decompositions.
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # (F, F)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = root_a @ cov_b @ root_a
    middle = 0.5 * (middle + middle.T)
    tr_root = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    d = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_root
    return float(d.clamp(min=0))


# Sources of samples ----------------------------------------------------------


def _noise(n: int, size: int, gen: torch.Generator) -> Tensor:
    x = 0.5 + 0.25 * torch.randn(n, 3, size, size, generator=gen)
    return x.clamp(0.0, 1.0)


@torch.no_grad()
def _stylegan2_samples(
    weights: str | None, n: int, gen: torch.Generator
) -> tuple[Tensor, Tensor | None]:
    """Samples of a StyleGAN2 checkpoint (untruncated, constant noise) and,
    for a class-conditional one, the shape index asked of each sample."""
    from lclr_stylegan2.loading import EMBEDDED_WEIGHTS, load_checkpoint

    loaded = load_checkpoint(weights if weights is not None else EMBEDDED_WEIGHTS)
    model = loaded.model.eval()
    c_dim = model.c_dim
    if c_dim:
        _check_classes(c_dim)
    images, classes = [], []
    for start in range(0, n, 100):
        m = min(100, n - start)
        z = torch.randn(m, model.style_dim, generator=gen)
        c = None
        if c_dim:
            idx = torch.randint(c_dim, (m,), generator=gen)
            classes.append(idx)
            c = torch.nn.functional.one_hot(idx, c_dim).float()
        w = model.mapping(z, c)
        img = model.synthesis(w, noise_mode="const")  # (m, 3, H, W) in [-1, 1]
        images.append(((img + 1.0) / 2.0).clamp(0.0, 1.0))
    asked = torch.cat(classes) if classes else None
    names = loaded.meta.get("class_names")
    return torch.cat(images), _as_shapes(asked, names)


def _check_classes(c_dim: int) -> None:
    """Refuse a generator whose class count is not the shapes world's."""
    if c_dim != len(SHAPES):
        from lclr.errors import CheckpointError

        raise CheckpointError(
            f"the generator has {c_dim} classes but the shapes world has "
            f"{len(SHAPES)}; pass a generator trained on the shapes world"
        )


def _as_shapes(asked: Tensor | None, names) -> Tensor | None:
    """Asked class indices of the generator as indices into ``SHAPES``
    (``None`` when its class names are not the shapes')."""
    if asked is None or not names or list(names) == list(SHAPES):
        return asked
    lookup = {name: i for i, name in enumerate(SHAPES)}
    if not all(name in lookup for name in names):
        return None
    return torch.tensor([lookup[names[i]] for i in asked.tolist()])


@torch.no_grad()
def _biggan_samples(
    weights: str | None, n: int, gen: torch.Generator, truncation: float
) -> tuple[Tensor, Tensor]:
    """Samples of a BigGAN-deep weights folder trained on the shapes world
    (codes: the truncated normal times ``truncation``, the stored batch
    statistics for it) and the shape index asked of each sample."""
    from lclr_biggan.generator import load_generator, truncated_normal

    if not 0.0 < truncation <= 1.0:
        from lclr.errors import ConfigError

        raise ConfigError(f"truncation must be in (0, 1], got {truncation}")
    loaded = load_generator(weights)  # the embedded default for None
    model = loaded.model
    c_dim = model.config.num_classes
    _check_classes(c_dim)
    images, classes = [], []
    for start in range(0, n, 100):
        m = min(100, n - start)
        z = truncation * truncated_normal((m, model.config.z_dim), gen)
        idx = torch.randint(c_dim, (m,), generator=gen)
        classes.append(idx)
        c = torch.nn.functional.one_hot(idx, c_dim).float()
        img = model(z, c, truncation)  # (m, 3, H, W) in [-1, 1]
        images.append(((img + 1.0) / 2.0).clamp(0.0, 1.0))
    return torch.cat(images), _as_shapes(torch.cat(classes), loaded.class_names)


def sample_source(
    source: str,
    n: int,
    seed: int,
    weights: str | None = None,
    size: int = 32,
    truncation: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """``(N, 3, H, W)`` samples of ``source`` and the class each was asked
    for (conditional generators only; else ``None``).

    ``source`` is ``stylegan2`` (``weights``, or the embedded default;
    untruncated), ``biggan`` (a weights folder or the embedded default, at
    ``truncation`` psi), ``real`` (renders), ``noise`` (Gaussian, mean 0.5,
    sd 0.25, clipped) or ``blend`` (the average of two independent renders).
    """
    from lclr.errors import ConfigError

    gen = torch.Generator().manual_seed(seed)
    if source == "stylegan2":
        return _stylegan2_samples(weights, n, gen)
    if source == "biggan":
        return _biggan_samples(weights, n, gen, truncation)
    if source == "real":
        return render(sample_factors(n, gen), size), None
    if source == "noise":
        return _noise(n, size, gen), None
    if source == "blend":
        a = render(sample_factors(n, gen), size)
        b = render(sample_factors(n, gen), size)
        return 0.5 * (a + b), None
    raise ConfigError(f"unknown source '{source}'; choose one of {', '.join(SOURCES)}")


# The bar ---------------------------------------------------------------------


def _tenths(spec, values: Tensor) -> list[int]:
    """How many of ``values`` fall in each tenth of the factor's range."""
    u = (values.double() - spec.low) / spec.span
    if spec.kind == "circular":
        u = torch.remainder(u, 1.0)
    bins = (u * 10).floor().clamp(0, 9).long()
    return torch.bincount(bins, minlength=10).tolist()


def measure_quality(
    images: Tensor,
    predictor: Any,
    *,
    seed: int = 0,
    asked: Tensor | None = None,
    refine_steps: int = REFINE_STEPS,
    grid: Path | None = None,
) -> dict[str, Any]:
    """Score ``(N, 3, H, W)`` samples in ``[0, 1]`` against the bar.

    ``predictor`` is a :class:`~lclr_shapes.predictor.FactorPredictor`;
    ``seed`` draws the real renders the Fréchet distances compare with;
    ``asked`` (optional, ``(N,)``) the class a conditional generator was
    asked for, to report how often it drew that class; ``grid`` (optional)
    a PNG to write samples and their re-renders into
    (:func:`write_error_grid`).
    """
    n = images.shape[0]
    classes = len(SHAPES)
    pred = predictor.predict(images)

    # 1. good samples: confident and re-rendered closely
    confidence = pred["probs"].max(dim=1).values
    error, renders = rerender(images, pred, refine_steps)
    confident = confidence >= CONFIDENCE
    close = error <= ERROR_BOUND
    good = confident & close
    share = float(good.double().mean())
    # which shapes fail: the good share among the samples read as each
    # (None for a shape no sample was read as)
    by_class: dict[str, float | None] = {}
    for s, name in enumerate(SHAPES):
        of_shape = pred["shape"] == s
        by_class[name] = (
            float(good[of_shape].double().mean()) if of_shape.any() else None
        )

    # 2. class histogram of all samples
    counts = torch.bincount(pred["shape"], minlength=classes).double()
    shares = (counts / n).tolist()
    low, high = 0.6 / classes, 1.4 / classes
    classes_pass = all(low <= s <= high for s in shares)

    # 3. coverage in tenths, among good samples
    tenths = {s.name: _tenths(s, pred[s.name][good]) for s in _CONTINUOUS}
    empty = {k: [i for i, c in enumerate(v) if c == 0] for k, v in tenths.items()}
    coverage_pass = not any(empty.values())

    # 4. Fréchet distances in the predictor's feature space
    gen = torch.Generator().manual_seed(seed + 1)
    size = images.shape[-1]
    real_a = predictor.predict(render(sample_factors(n, gen), size))["features"]
    real_b = predictor.predict(render(sample_factors(n, gen), size))["features"]
    noise = predictor.predict(_noise(n, size, gen))["features"]
    fd = {
        "samples": frechet_distance(pred["features"], real_a),
        "real_floor": frechet_distance(real_b, real_a),
        "noise": frechet_distance(noise, real_a),
    }
    fd["limit"] = math.sqrt(max(fd["real_floor"], 1e-12) * fd["noise"])
    fd["pass"] = fd["samples"] <= fd["limit"]

    report: dict[str, Any] = {
        "n": n,
        "good": {
            "share": share,
            "min_share": GOOD_SHARE,
            "confident_share": float(confident.double().mean()),
            "rerender_share": float(close.double().mean()),
            "median_error": float(error.median()),
            "by_class": by_class,
            "error_bound": ERROR_BOUND,
            "min_confidence": CONFIDENCE,
            "refine_steps": refine_steps,
            "pass": share >= GOOD_SHARE,
        },
        "classes": {
            "shares": dict(zip(SHAPES, shares)),
            "low": low,
            "high": high,
            "pass": classes_pass,
        },
        "coverage": {"tenths": tenths, "empty": empty, "pass": coverage_pass},
        "frechet": fd,
    }
    if asked is not None:
        hit = (pred["shape"] == asked.to(pred["shape"].device)).double().mean()
        report["conditioning_accuracy"] = float(hit)
    if grid is not None:
        report["grid"] = str(
            write_error_grid(grid, images, renders, error, pred["shape"])
        )
    parts = ("good", "classes", "coverage", "frechet")
    report["pass"] = all(report[p]["pass"] for p in parts)
    return report


def quality_of_source(
    source: str = "stylegan2",
    *,
    weights: str | None = None,
    n: int = 1000,
    seed: int = 0,
    predictor_weights: str | None = None,
    refine_steps: int = REFINE_STEPS,
    truncation: float = 1.0,
    grid: Path | None = None,
) -> dict[str, Any]:
    """Sample ``source`` (see :func:`sample_source`) and measure it
    (``grid``: see :func:`measure_quality`)."""
    from lclr_shapes.predictor import load_predictor

    predictor = load_predictor(predictor_weights)
    images, asked = sample_source(source, n, seed, weights, truncation=truncation)
    report = measure_quality(
        images,
        predictor,
        seed=seed,
        asked=asked,
        refine_steps=refine_steps,
        grid=grid,
    )
    report["source"] = source
    report["seed"] = seed
    if source in GENERATORS:
        report["weights"] = str(weights) if weights else "embedded"
    if source == "biggan":
        report["truncation"] = truncation
    return report


FRECHET_FIGURES = ("samples", "real_floor", "noise")


def provenance_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of a :func:`quality_of_source` report that a generator's
    provenance file records (rounded, JSON-able)."""
    coverage, good = report["coverage"], report["good"]
    shares, frechet = report["classes"]["shares"], report["frechet"]
    empty = {k: v for k, v in coverage["empty"].items() if v}
    summary = {
        "command": f"lclr shapes quality (n={report['n']}, seed {report['seed']})",
        "passes": report["pass"],
        "good_share": round(good["share"], 3),
        "confident_share": round(good["confident_share"], 3),
        f"rerender_within_{ERROR_BOUND}": round(good["rerender_share"], 3),
        "median_rerender_error": round(good["median_error"], 3),
        "good_share_by_class": {
            k: None if v is None else round(v, 3) for k, v in good["by_class"].items()
        },
        "class_shares": {k: round(v, 3) for k, v in shares.items()},
        "coverage": (
            "every tenth of every continuous factor"
            if coverage["pass"]
            else {"empty_tenths": empty}
        ),
        "frechet": {k: round(frechet[k], 2) for k in FRECHET_FIGURES},
    }
    if "conditioning_accuracy" in report:
        drawn = report["conditioning_accuracy"]
        summary["conditioning_drawn_as_asked"] = round(drawn, 3)
    if "truncation" in report:
        summary["truncation"] = report["truncation"]
    return summary


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short human-readable account of a :func:`measure_quality` report."""

    def mark(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    g, c, cov, fd = (report[k] for k in ("good", "classes", "coverage", "frechet"))
    shares = ", ".join(f"{k} {v:.1%}" for k, v in c["shares"].items())
    empty = {k: v for k, v in cov["empty"].items() if v}
    lines = [
        f"good samples  {mark(g['pass'])}  {g['share']:.1%} (>= "
        f"{g['min_share']:.0%}; confident {g['confident_share']:.1%}, "
        f"re-render within {g['error_bound']} {g['rerender_share']:.1%}, "
        f"median error {g['median_error']:.3f})",
        "  by shape    "
        + ", ".join(
            f"{k} {'n/a' if v is None else f'{v:.1%}'}"
            for k, v in g["by_class"].items()
        ),
        f"classes       {mark(c['pass'])}  {shares} (each in "
        f"[{c['low']:.3f}, {c['high']:.3f}])",
        f"coverage      {mark(cov['pass'])}  "
        + (f"empty tenths: {empty}" if empty else "every tenth of every factor"),
        f"frechet       {mark(fd['pass'])}  samples {fd['samples']:.2f}, "
        f"real floor {fd['real_floor']:.2f}, noise {fd['noise']:.2f} "
        f"(limit {fd['limit']:.2f})",
    ]
    if "conditioning_accuracy" in report:
        lines.append(
            f"conditioning  {report['conditioning_accuracy']:.1%} drawn as asked"
        )
    if "grid" in report:
        lines.append(f"grid          {report['grid']}")
    lines.append(f"overall       {mark(report['pass'])}")
    return lines
