"""attrs validators for plugin option classes, with messages users can act on.

A validator raises ``ValueError``; the registry turns it into one line naming
the component, e.g. ``objective 'latentclr': temperature must be a finite
number > 0, got 0.0``.
"""

from __future__ import annotations

import math

import attrs


def positive(instance, attribute, value):
    """A finite number greater than 0."""
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value}")


def positive_float(default: float):
    """An attrs field holding a finite float > 0 (ints are converted)."""
    return attrs.field(default=default, converter=float, validator=positive)


def boolean(instance, attribute, value):
    """Exactly ``True`` or ``False`` (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be true or false, got {value!r}")


def positive_int(instance, attribute, value):
    """An integer of at least 1 (``True`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")
