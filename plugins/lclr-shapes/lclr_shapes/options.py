"""Options of the shapes evaluator: an attrs class with no torch import, so
the plugin registers it without loading torch."""

from __future__ import annotations

import math

import attrs


def _samples(instance, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 256:
        raise ValueError(f"samples must be an integer >= 256, got {value!r}")


def _positive_int(instance, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")


def _count(instance, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer >= 0, got {value!r}")


def _alpha(instance, attribute, value):
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"alpha must be a finite number > 0, got {value}")


def _reference(instance, attribute, value):
    if not (0 < value <= 1):
        raise ValueError(f"reference must be in (0, 1], got {value}")


def _unit(instance, attribute, value):
    if not (0 <= value < 1):
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value}")


def _optional_float(value):
    return None if value is None else float(value)


@attrs.frozen(kw_only=True)
class ShapesEvalOptions:
    """Options of the ``shapes`` evaluator."""

    samples: int = attrs.field(default=256, validator=_samples)
    """Latent samples each direction edits (both signs of alpha)."""
    seed: int = attrs.field(default=0, converter=int)
    """Seed of the latent samples."""
    alpha: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_alpha
    )
    """Edit strength; None for the run's alpha."""
    batch_size: int = attrs.field(default=128, validator=_positive_int)
    """Images synthesised per forward pass."""
    reference: float = attrs.field(default=0.25, converter=float, validator=_reference)
    """Mean change at which a direction's effect counts in full."""
    tolerance: float = attrs.field(default=0.02, converter=float, validator=_unit)
    """Continuous changes up to this (in matrix units) count as none."""
    random_baseline: int = attrs.field(default=1, validator=_count)
    """Sets of K random directions also scored, for comparison (0: none)."""
    predictor: str | None = None
    """Predictor weights; None for the ones shipped with lclr-shapes."""
