"""lclr-directions: the global, linear and nonlinear direction models of
LatentCLR, as an lclr plugin."""

from lclr_directions.models import (
    GlobalDirections,
    GlobalOptions,
    LinearDirections,
    LinearOptions,
    NonlinearDirections,
    NonlinearOptions,
)

__all__ = [
    "GlobalDirections",
    "GlobalOptions",
    "LinearDirections",
    "LinearOptions",
    "NonlinearDirections",
    "NonlinearOptions",
]
