"""Options of the direction models: attrs classes with no torch import, so
the plugin registers them without loading torch."""

from __future__ import annotations

import attrs
from attrs import validators as v

from lclr.validators import boolean as _bool
from lclr.validators import positive_float as _float_field
from lclr.validators import positive_int as _positive_int

# Options --------------------------------------------------------------


@attrs.frozen(kw_only=True)
class GlobalOptions:
    """Options of the ``global`` direction model."""

    init_scale: float = _float_field(1.0)
    """theta_k starts as init_scale * N(0, I) (the authors' release: N(0, I))."""

    eps: float = _float_field(1e-12)
    """Where |u| <= eps the edit is zero (no NaN, no gradient)."""


@attrs.frozen(kw_only=True)
class LinearOptions:
    """Options of the ``linear`` direction model."""

    bias: bool = attrs.field(default=False, validator=_bool)
    """Add a bias b_k: u = M_k z + b_k. The paper has none (u = M_k z); the
    authors' release always has one (its torch Linear keeps the default
    bias), so set this to reproduce it."""

    init_scale: float = _float_field(1.0)
    """M_k (and b_k) start uniform in +-init_scale/sqrt(D), torch's Linear
    default when 1 (as in the authors' release)."""

    eps: float = _float_field(1e-12)
    """Where |u| <= eps the edit is zero (no NaN, no gradient)."""


@attrs.frozen(kw_only=True)
class NonlinearOptions:
    """Options of the ``nonlinear`` direction model."""

    depth: int = attrs.field(default=3, validator=_positive_int)
    """Number of linear layers in each direction's MLP (the authors' default
    config: 3; their released demo models use 1)."""

    hidden: int | None = attrs.field(default=None, validator=v.optional(_positive_int))
    """Width of the hidden layers; None for D, the latent size (as the
    authors)."""

    bias: bool = attrs.field(default=True, validator=_bool)
    """Biases on the hidden layers. The last layer has none, as in the
    authors' release (with depth 1 the single layer has none)."""

    batchnorm: bool = attrs.field(default=False, validator=_bool)
    """Batch normalisation (per direction) before each ReLU, as the authors'
    release does. Off by default: with it an edit depends on the rest of its
    batch while training (call ``model.eval()`` before rendering)."""

    init_scale: float = _float_field(1.0)
    """Weights start uniform in +-init_scale/sqrt(fan_in), torch's Linear
    default when 1 (as in the authors' release)."""

    eps: float = _float_field(1e-12)
    """Where |u| <= eps the edit is zero (no NaN, no gradient)."""
