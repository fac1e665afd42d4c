"""The toy plugin's hooks. No torch import here: ``lclr --help`` stays fast."""

import attrs

from lclr import hookimpl


def _positive(instance, attribute, value):
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1; got {value}")


@attrs.frozen(kw_only=True)
class ToyOptions:
    """Options of the toy generator."""

    latent_dim: int = attrs.field(default=32, validator=_positive)
    width: int = attrs.field(default=8, validator=_positive)
    seed: int = 0


def create_toy(weights, options):
    from lclr_toy.generator import ToyGenerator

    return ToyGenerator.create(weights, options)


@hookimpl
def lclr_register_generators(register):
    register("toy", create_toy, options=ToyOptions, summary="tiny random generator")
