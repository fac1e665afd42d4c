"""lclr plugin hooks: registers the ``latentclr`` objective."""

from __future__ import annotations

from lclr.hookspecs import hookimpl
from lclr_contrastive.options import LatentCLROptions


def create_latentclr(options=None):
    """Factory for ``latentclr``: the contrastive loss on feature changes."""
    from lclr_contrastive.objective import LatentCLR

    return LatentCLR(options)


@hookimpl
def lclr_register_objectives(register):
    """Register the LatentCLR objective."""
    register(
        "latentclr",
        create_latentclr,
        options=LatentCLROptions,
        summary="contrastive loss: a direction's feature changes alike across "
        "samples, unlike other directions'",
    )
