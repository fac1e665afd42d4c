"""Options of the closed-form direction models (attrs, no torch import)."""

from __future__ import annotations

import attrs

from lclr.validators import positive_int


@attrs.frozen(kw_only=True)
class GanSpaceOptions:
    """Options of the ``ganspace`` direction model."""

    samples: int = attrs.field(default=2048, validator=positive_int)
    """Codes drawn from the run's seed for the principal components. The
    authors drew 10^6 for StyleGAN's W; a few thousand settle the top
    components of a small network, and the feature PCA of a ``z`` space
    holds ``samples`` activation vectors in memory."""


@attrs.frozen(kw_only=True)
class SeFaOptions:
    """The ``sefa`` direction model has no options: the run's
    ``edit_layers`` choose which per-layer codes' weights it factorises."""
