"""Options of the LatentCLR objective: attrs classes with no torch import,
so the plugin registers them without loading torch."""

from __future__ import annotations

import attrs
from attrs import validators as v

from lclr.validators import boolean as _bool
from lclr.validators import positive_float as _float_field
from lclr.validators import positive_int as _positive_int

#: the settings each ``variant`` stands for
VARIANTS = {
    "paper": {
        "similarity": "cosine",
        "temperature_mode": "divide",
        "reduction": "sum",
        "projector": "none",
    },
    "authors": {
        "similarity": "abs_cosine",
        "temperature_mode": "multiply",
        "reduction": "mean",
        "projector": "normalize",
    },
}


def _choice(*names):
    return v.optional(v.in_(names))


@attrs.frozen(kw_only=True)
class LatentCLROptions:
    """Options of the ``latentclr`` objective.

    ``similarity``, ``temperature_mode``, ``reduction`` and ``projector``
    left as None take the value of ``variant``; given explicitly they
    override it. After construction all four hold their effective values.
    """

    temperature: float = _float_field(0.5)
    """tau. Logits are sim / tau (``divide``) or sim * tau (``multiply``)."""

    variant: str = attrs.field(default="paper", validator=v.in_(tuple(VARIANTS)))
    """``paper``: cosine, divide, sum, no projector. ``authors``: the released
    code: abs_cosine, multiply, mean, normalize."""

    similarity: str | None = attrs.field(
        default=None, validator=_choice("cosine", "abs_cosine")
    )
    """``cosine``: sim = cos(a, b). ``abs_cosine``: sim = |cos(a, b)|, so a
    change and its opposite count as the same (the authors' release)."""

    temperature_mode: str | None = attrs.field(
        default=None, validator=_choice("divide", "multiply")
    )
    """``divide``: logit = sim / tau (the paper). ``multiply``: logit =
    sim * tau (the authors' release; its 0.5 acts like tau = 2)."""

    reduction: str | None = attrs.field(default=None, validator=_choice("sum", "mean"))
    """How the pairs inside each log term combine. ``sum``: the paper's
    sums of exp over the N-1 positives and the (K-1)N negatives. ``mean``:
    those sums divided by N-1 and (K-1)N (the authors' release); the loss
    shifts by log((K-1)N / (N-1)), the gradient is the same."""

    projector: str | None = attrs.field(
        default=None, validator=_choice("none", "normalize", "mlp")
    )
    """Applied to raw features h before the difference, by
    ``transform_features``. ``none``: f = h' - h. ``normalize``: f =
    h'/|h'| - h/|h| (the authors' default identity head). ``mlp``: f =
    g(h')/|g(h')| - g(h)/|g(h)| with g a trainable MLP (their other heads)."""

    projector_depth: int = attrs.field(default=3, validator=_positive_int)
    """Linear layers of the ``mlp`` head (the authors: 3, or 1 for linear)."""

    projector_hidden: int = attrs.field(default=256, validator=_positive_int)
    """Hidden width of the ``mlp`` head (the authors' StyleGAN2 setting)."""

    projector_out: int = attrs.field(default=128, validator=_positive_int)
    """Output width of the ``mlp`` head (the authors' StyleGAN2 setting)."""

    projector_batchnorm: bool = attrs.field(default=True, validator=_bool)
    """Batch norm before each ReLU of the ``mlp`` head (after its only layer
    when depth is 1), as the authors' heads."""

    zero_change: str = attrs.field(default="error", validator=v.in_(("error", "guard")))
    """A feature change that is all zeros (an edit that did not reach the
    target layer): ``error`` raises FeatureChangeError; ``guard`` gives it
    similarity 0 to everything and no gradient."""

    def __attrs_post_init__(self):
        for name, value in VARIANTS[self.variant].items():
            if getattr(self, name) is None:
                # frozen class: the documented way to fill a field once
                object.__setattr__(self, name, value)
