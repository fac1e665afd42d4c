"""lclr plugin hooks: registers the ``biggan`` generator.

Importing this module must stay cheap (``lclr --help`` loads it), so torch
and the network are imported inside the factory only.
"""

from __future__ import annotations

import attrs

from lclr.errors import ConfigError
from lclr.hookspecs import hookimpl


def truncation_value(value) -> float:
    """``value`` as a truncation psi in (0, 1], or a :class:`ConfigError`."""
    try:
        if isinstance(value, bool):
            raise ValueError
        psi = float(value)
    except (TypeError, ValueError):
        psi = None
    if psi is None or not 0.0 < psi <= 1.0:
        raise ConfigError(
            f"truncation must be a number in (0, 1], e.g. 0.4; got {value!r}"
        )
    return psi


def _label(inst, attribute, value):
    """Validator: a class index or a class name."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"class_label must be an index or a name, got {value!r}")


@attrs.frozen(kw_only=True)
class BigGANOptions:
    """Options of the ``biggan`` generator."""

    truncation: float = attrs.field(
        default=0.4,
        converter=truncation_value,
        metadata={"help": "psi: codes cut to [-2, 2] and scaled by psi"},
    )
    class_label: int | str = attrs.field(
        default=0,
        validator=_label,
        metadata={
            "help": "class: index or name (the weights' own names, else "
            "ImageNet's: WordNet id or name)"
        },
    )


def create_biggan(weights=None, options=None):
    """Factory: a frozen BigGAN-deep generator from a weights folder."""
    from .generator import load_generator

    opts = options if options is not None else BigGANOptions()
    return load_generator(
        weights, truncation=opts.truncation, class_label=opts.class_label
    )


@hookimpl
def lclr_register_generators(register):
    """Register ``biggan``."""
    register(
        "biggan",
        create_biggan,
        options=BigGANOptions,
        summary="BigGAN-deep (per-block z), plain PyTorch; --weights or the "
        "embedded shapes default",
    )
