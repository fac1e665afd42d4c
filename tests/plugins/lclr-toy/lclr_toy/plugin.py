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


EXIT_AT = "LCLR_TOY_EXIT_AT"
"""Test-only: ``STEP:RANK`` ends that torchrun rank abruptly after STEP."""


@hookimpl
def lclr_step_end(run, step, metrics):
    """Test-only: a process that dies mid-run, as a crashed GPU would."""
    import os

    at, _, rank = os.environ.get(EXIT_AT, "").partition(":")
    if at and int(at) == step and os.environ.get("RANK", "0") == (rank or "0"):
        os._exit(17)
