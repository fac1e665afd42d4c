"""lclr plugin hooks: registers the ``ganspace`` and ``sefa`` direction
models."""

from __future__ import annotations

from lclr.hookspecs import hookimpl
from lclr_baselines.options import GanSpaceOptions, SeFaOptions


def create_ganspace(k, latent_dim, options=None):
    """Factory for ``ganspace``: principal components (Härkönen et al.)."""
    from lclr_baselines.models import GanSpaceDirections

    return GanSpaceDirections(k, latent_dim, options)


def create_sefa(k, latent_dim, options=None):
    """Factory for ``sefa``: eigenvectors of the first weights (Shen & Zhou)."""
    from lclr_baselines.models import SeFaDirections

    return SeFaDirections(k, latent_dim, options)


@hookimpl
def lclr_register_direction_models(register):
    """Register the two closed-form baselines."""
    register(
        "ganspace",
        create_ganspace,
        options=GanSpaceOptions,
        summary="GANSpace: principal components of W, or of the target layer; "
        "fitted, not trained",
    )
    register(
        "sefa",
        create_sefa,
        options=SeFaOptions,
        summary="SeFa: top eigenvectors of the weights that first read a code; "
        "fitted, not trained",
    )
