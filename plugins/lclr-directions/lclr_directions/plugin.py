"""lclr plugin hooks: registers the ``global``, ``linear`` and ``nonlinear``
direction models."""

from __future__ import annotations

from lclr.hookspecs import hookimpl
from lclr_directions.options import GlobalOptions, LinearOptions, NonlinearOptions


def create_global(k, latent_dim, options=None):
    """Factory for ``global``: K free directions theta_k."""
    from lclr_directions.models import GlobalDirections

    return GlobalDirections(k, latent_dim, options)


def create_linear(k, latent_dim, options=None):
    """Factory for ``linear``: K matrices M_k, delta z along M_k z."""
    from lclr_directions.models import LinearDirections

    return LinearDirections(k, latent_dim, options)


def create_nonlinear(k, latent_dim, options=None):
    """Factory for ``nonlinear``: K small MLPs, delta z along NN_k(z)."""
    from lclr_directions.models import NonlinearDirections

    return NonlinearDirections(k, latent_dim, options)


@hookimpl
def lclr_register_direction_models(register):
    """Register the three LatentCLR direction models."""
    register(
        "global",
        create_global,
        options=GlobalOptions,
        summary="one fixed direction per k, the same for every z",
    )
    register(
        "linear",
        create_linear,
        options=LinearOptions,
        summary="delta z along M_k z: one D x D matrix per direction",
    )
    register(
        "nonlinear",
        create_nonlinear,
        options=NonlinearOptions,
        summary="delta z along NN_k(z): one small MLP per direction",
    )
