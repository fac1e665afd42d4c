"""A small CNN that reads the factors back from a shapes image.

It is trained, supervised, on an endless stream of renders and predicts the
shape class (softmax over :data:`~lclr_shapes.render.SHAPES`) and every
continuous factor: linear ones (``x``, ``y``, ``scale``, ``background``)
rescaled to ``[-1, 1]``, circular ones (``rotation``, ``hue``) as a point
``(cos, sin)`` on the unit circle. Its 128-dimensional penultimate layer is
the feature space of the quality bar's Fréchet distance.

Held-out figures, measured by :func:`evaluate_predictor`:

- class accuracy, the share of samples whose most probable class is right;
- R² of a linear factor, ``1 - sum (v - v_hat)^2 / sum (v - mean v)^2``;
- R² of a circular factor, the same on the unit circle:
  ``1 - sum |p - p_hat|^2 / sum |p - mean p|^2`` with ``p`` the true angle's
  point ``(cos, sin)`` and ``p_hat`` the predicted one normalised to length
  one. ``|p - p_hat|^2 = 2 - 2 cos(error)``, close to the squared angular
  error in radians when it is small; for angles spread over the whole circle
  the denominator is about 1 per sample, so R² = 0.95 means a root mean
  square angular error of about 0.22 rad (13 degrees) on the full circle.

The recipe, one command (one CPU thread, a fixed seed)::

    python -m lclr_shapes.predictor train --out predictor.pt

and ``python -m lclr_shapes.predictor evaluate`` re-measures the shipped
weights. Weights are a plain dict of tensors plus JSON-able metadata, read
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lclr_shapes.render import FACTORS, SHAPES, render, sample_factors

logger = logging.getLogger(__name__)

__all__ = [
    "FactorPredictor",
    "decode",
    "encode_targets",
    "evaluate_predictor",
    "load_predictor",
    "predict",
    "r2_scores",
    "train_predictor",
]

SIZE = 32
FEATURE_DIM = 128
DEFAULT_WIDTH = 16
EVAL_SEED = 987_654

LINEAR = [s for s in FACTORS if s.kind == "linear"]
CIRCULAR = [s for s in FACTORS if s.kind == "circular"]
CONTINUOUS = [s for s in FACTORS if s.kind != "categorical"]


def _weights_path() -> Path:
    return Path(str(resources.files("lclr_shapes") / "weights" / "predictor.pt"))


# Targets -------------------------------------------------------------------


def encode_targets(factors: dict[str, Tensor]) -> Tensor:
    """Regression targets ``(N, T)``: linear factors in ``[-1, 1]``, then
    ``(cos, sin)`` of each circular factor, in :data:`FACTORS` order."""
    cols = []
    for spec in LINEAR:
        v = factors[spec.name].float()
        cols.append(2.0 * (v - spec.low) / spec.span - 1.0)
    for spec in CIRCULAR:
        a = 2.0 * math.pi * (factors[spec.name].float() - spec.low) / spec.span
        cols += [torch.cos(a), torch.sin(a)]
    return torch.stack(cols, dim=1)


def decode(regression: Tensor) -> dict[str, Tensor]:
    """Factor values from ``(N, T)`` regression outputs (inverse of
    :func:`encode_targets`); circular values land in ``[low, high)``."""
    out: dict[str, Tensor] = {}
    for i, spec in enumerate(LINEAR):
        out[spec.name] = spec.low + (regression[:, i] + 1.0) * spec.span / 2.0
    j = len(LINEAR)
    for spec in CIRCULAR:
        a = torch.atan2(regression[:, j + 1], regression[:, j])
        turn = torch.remainder(a / (2.0 * math.pi), 1.0)
        out[spec.name] = spec.low + turn * spec.span
        j += 2
    return out


# The network ---------------------------------------------------------------


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class FactorPredictor(nn.Module):
    """Three stages of two 3x3 convolutions (width w, 2w, 4w) with max
    pooling, a 128-unit feature layer, a class head and a regression head.

    Takes ``(N, 3, H, W)`` images in ``[0, 1]``; any H, W other than 32 is
    resized to 32 first.
    """

    def __init__(self, width: int = DEFAULT_WIDTH) -> None:
        super().__init__()
        self.width = width
        w = width
        self.body = nn.Sequential(
            *_block(3, w),
            *_block(w, w),
            nn.MaxPool2d(2),  # 16x16
            *_block(w, 2 * w),
            *_block(2 * w, 2 * w),
            nn.MaxPool2d(2),  # 8x8
            *_block(2 * w, 4 * w),
            *_block(4 * w, 4 * w),
            nn.MaxPool2d(2),  # 4x4
            nn.Flatten(),
            nn.Linear(4 * w * 16, FEATURE_DIM),
            nn.ReLU(),
        )
        self.classes = nn.Linear(FEATURE_DIM, len(SHAPES))
        self.regression = nn.Linear(FEATURE_DIM, len(LINEAR) + 2 * len(CIRCULAR))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits (N, C), regression (N, T), features (N, 128))``."""
        if images.shape[-2:] != (SIZE, SIZE):
            images = F.interpolate(
                images, size=(SIZE, SIZE), mode="bilinear", antialias=True
            )
        feats = self.body(images * 2.0 - 1.0)  # (N, 128)
        return self.classes(feats), self.regression(feats), feats

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 500) -> dict[str, Tensor]:
        """Factors read from ``(N, 3, H, W)`` images in ``[0, 1]``.

        Returns ``probs`` ``(N, C)``, ``shape`` ``(N,)`` (the most probable
        class), one ``(N,)`` tensor per continuous factor in its own units,
        and ``features`` ``(N, 128)``, all on the CPU.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        parts: list[dict[str, Tensor]] = []
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device).float()
            logits, reg, feats = self(batch)
            part = decode(reg)
            part["probs"] = logits.softmax(dim=1)
            part["shape"] = logits.argmax(dim=1)
            part["features"] = feats
            parts.append({k: v.cpu() for k, v in part.items()})
        self.train(was_training)
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def load_predictor(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> FactorPredictor:
    """The trained predictor, in eval mode; ``path=None`` loads the weights
    shipped with the package."""
    from lclr.errors import CheckpointError

    path = Path(path) if path is not None else _weights_path()
    if not path.is_file():
        raise CheckpointError(
            f"no predictor weights at {path}; train them with "
            "'python -m lclr_shapes.predictor train --out PATH'"
        )
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        meta = blob["meta"]
        with torch.random.fork_rng(devices=[]):  # loading draws no random numbers
            model = FactorPredictor(width=int(meta["width"]))
        model.load_state_dict(blob["state"])
    except Exception as err:  # noqa: BLE001 - any failure is the file's fault
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise CheckpointError(
            f"{path} is not a shapes predictor checkpoint ({lines[0][:120]}); "
            "pass the predictor.pt written by 'lclr shapes train-predictor'"
        ) from None
    return model.to(device).eval()


@lru_cache(maxsize=1)
def _default_predictor() -> FactorPredictor:
    return load_predictor()


def predict(images: Tensor) -> dict[str, Tensor]:
    """:meth:`FactorPredictor.predict` with the shipped weights."""
    return _default_predictor().predict(images)


# Measuring -----------------------------------------------------------------


def r2_scores(pred: dict[str, Tensor], true: dict[str, Tensor]) -> dict[str, float]:
    """R² per continuous factor (see the module docstring for circular)."""
    out: dict[str, float] = {}
    for spec in CONTINUOUS:
        t = true[spec.name].double()
        p = pred[spec.name].double()
        if spec.kind == "linear":
            sse = (t - p).square().sum()
            sst = (t - t.mean()).square().sum()
        else:
            at = 2.0 * math.pi * (t - spec.low) / spec.span
            ap = 2.0 * math.pi * (p - spec.low) / spec.span
            pt = torch.stack([at.cos(), at.sin()], dim=1)
            pp = torch.stack([ap.cos(), ap.sin()], dim=1)
            sse = (pt - pp).square().sum()
            sst = (pt - pt.mean(dim=0)).square().sum()
        out[spec.name] = float(1.0 - sse / sst)
    return out


def evaluate_predictor(
    model: FactorPredictor, n: int = 5000, seed: int = EVAL_SEED
) -> dict[str, Any]:
    """Held-out class accuracy and R² per factor on ``n`` fresh renders."""
    gen = torch.Generator().manual_seed(seed)
    factors = sample_factors(n, gen)
    pred = model.predict(render(factors, SIZE))
    acc = (pred["shape"] == factors["shape"]).double().mean()
    return {
        "n": n,
        "seed": seed,
        "class_accuracy": float(acc),
        "r2": r2_scores(pred, factors),
    }


# Training ------------------------------------------------------------------


def train_predictor(
    steps: int = 8000,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    width: int = DEFAULT_WIDTH,
    log_every: int = 250,
) -> FactorPredictor:
    """Train a predictor from scratch on the render stream of ``seed``.

    AdamW with a short warm-up and a cosine decay; loss = cross-entropy of
    the class + mean squared error of the regression targets.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FactorPredictor(width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warm = min(200, steps // 10)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start = time.time()
    for step in range(steps):
        factors = sample_factors(batch_size, gen)
        images = render(factors, SIZE)  # (B, 3, 32, 32)
        logits, reg, _ = model(images)
        loss_cls = F.cross_entropy(logits, factors["shape"])
        loss_reg = (reg - encode_targets(factors)).square().mean()
        loss = loss_cls + loss_reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            logger.info(
                "step %d/%d cls %.4f reg %.5f (%.0f s)",
                step + 1,
                steps,
                loss_cls.item(),
                loss_reg.item(),
                time.time() - start,
            )
    return model.eval()


def save_predictor(
    model: FactorPredictor, path: str | Path, meta: dict[str, Any]
) -> None:
    """Write weights as ``{"state": tensors, "meta": JSON-able dict}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    full_meta = {"width": model.width, "size": SIZE, "shapes": list(SHAPES), **meta}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state": state, "meta": full_meta}, tmp)
    tmp.replace(path)


def train_and_save(
    out: str | Path,
    steps: int = 8000,
    batch_size: int = 64,
    seed: int = 0,
    threads: int = 1,
    eval_n: int = 5000,
    replace: bool = False,
) -> dict[str, Any]:
    """The whole recipe: train, measure on held-out renders, write
    ``out`` (weights) and ``out`` with suffix ``.json`` (figures, recipe).

    Refuses, before training, to overwrite either file unless ``replace``.
    """
    from lclr.errors import RunFolderError

    for path in (Path(out), Path(out).with_suffix(".json")):
        if path.exists() and not replace:
            raise RunFolderError(
                f"{path} already exists; choose another --out or pass --force"
            )
    torch.set_num_threads(threads)
    start = time.time()
    model = train_predictor(steps=steps, batch_size=batch_size, seed=seed)
    minutes = (time.time() - start) / 60.0
    figures = evaluate_predictor(model, n=eval_n)
    recipe = {
        "command": (
            f"python -m lclr_shapes.predictor train --out {out} "
            f"--steps {steps} --batch-size {batch_size} --seed {seed} "
            f"--threads {threads}"
        ),
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "threads": threads,
        "minutes": round(minutes, 1),
        "torch": str(torch.__version__),
    }
    report = {"held_out": figures, "recipe": recipe}
    save_predictor(model, out, {"recipe": recipe, "held_out": figures})
    Path(out).with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m lclr_shapes.predictor {train,evaluate}``."""
    parser = argparse.ArgumentParser(prog="python -m lclr_shapes.predictor")
    sub = parser.add_subparsers(dest="verb", required=True)
    tr = sub.add_parser("train", help="train from scratch and write weights")
    tr.add_argument("--out", default="predictor.pt")
    tr.add_argument("--steps", type=int, default=8000)
    tr.add_argument("--batch-size", type=int, default=64)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--force", action="store_true", help="replace --out")
    ev = sub.add_parser("evaluate", help="measure held-out accuracy")
    ev.add_argument("--weights", default=None)
    ev.add_argument("-n", type=int, default=5000)
    ev.add_argument("--seed", type=int, default=EVAL_SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from lclr.errors import LclrError

    try:
        if args.verb == "train":
            report = train_and_save(
                args.out,
                args.steps,
                args.batch_size,
                args.seed,
                args.threads,
                replace=args.force,
            )
        else:
            torch.set_num_threads(1)
            weights = load_predictor(args.weights)
            report = evaluate_predictor(weights, args.n, args.seed)
    except LclrError as exc:
        parser.exit(exc.exit_code, f"Error: {exc}\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
