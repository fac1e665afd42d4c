"""The settings of one GAN training run, validated and serialisable."""

from __future__ import annotations

import json
import math

import attrs


def _positive(instance, attribute, value):
    # NaN fails the comparison; infinity (--minutes inf) would never stop
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value}")


def _rate(instance, attribute, value):
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value}")


def _check_weight(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _weight(instance, attribute, value):
    _check_weight(attribute.name, value)


def _probability(instance, attribute, value):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value}")


def _switch(instance, attribute, value):
    # "yes" or 1 from an edited config.json would read as on, "false" too
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be true or false, got {value!r}")


def _int_keys(value) -> dict[int, int]:
    return {int(k): int(v) for k, v in dict(value).items()}


LATE_FIELDS = ("mode_seeking", "r1_gamma", "augment_p", "class_loss", "feature_render")
"""Settings a run may change at ``late_from`` (see :attr:`GanConfig.late`)."""

FLAGS = {
    "arch": "--arch",
    "seed": "--seed",
    "batch": "--batch-size",
    "r1_gamma": "--r1-gamma",
    "pl_weight": "--pl-weight",
    "mode_seeking": "--mode-seeking",
    "augment_p": "--augment-p",
    "style_dim": "--z-dim",
    "biggan_width": "--biggan-width",
    "biggan_blocks": "--biggan-blocks",
    "biggan_attention": "--biggan-attention",
    "biggan_lr": "--biggan-lr",
    "feature_d": "--feature-d",
    "feature_class": "--feature-class",
    "feature_render": "--feature-render",
    "feature_width": "--feature-width",
    "feature_steps": "--feature-steps",
    "feature_hidden": "--feature-hidden",
    "d_channels": "--d-channels",
    "ema_kimg": "--ema-kimg",
    "reuse_fakes": "--reuse-fakes",
    "mbstd_by": "--mbstd-by",
    "late_from": "--late-from",
    "late": "--late",
}
"""The fields the training command's options set, and those options."""


USED_ONLY_WITH = {
    "biggan_width": "is for arch biggan; add arch biggan or drop it",
    "biggan_blocks": "is for arch biggan; add arch biggan or drop it",
    "biggan_attention": "is for arch biggan; add arch biggan or drop it",
    "biggan_lr": "is for arch biggan; add arch biggan or drop it",
    "feature_width": "sets the feature network, which only feature_d trains; "
    "give feature_d a weight above 0 or drop it",
    "feature_steps": "sets the feature network, which only feature_d trains; "
    "give feature_d a weight above 0 or drop it",
    "feature_hidden": "sets the feature heads, which only feature_d trains; "
    "give feature_d a weight above 0 or drop it",
}
"""Fields that only some runs use, and what to do when one is set for a
run that would not use it."""


def refuse_unused(config, names) -> None:
    """Raise ValueError for the first of the fields ``names`` that
    ``config`` would not use (a BigGAN-deep setting on another arch, a
    feature-network setting without ``feature_d``)."""
    feature = {"feature_width", "feature_steps", "feature_hidden"}
    unused = feature if not config.feature_d else set()
    if config.arch != "biggan":
        unused |= {"biggan_width", "biggan_blocks", "biggan_attention", "biggan_lr"}
    for name in names:
        if name in unused:
            raise ValueError(f"{name} {USED_ONLY_WITH[name]}")


def channels_text(channels: dict[int, int]) -> str:
    """Channels per resolution as ``--d-channels`` spells them:
    ``RES:CH`` pairs from the largest resolution down, comma-separated
    (``32:32,16:64,8:128,4:128``)."""
    return ",".join(f"{res}:{ch}" for res, ch in sorted(channels.items(), reverse=True))


def parse_channels(text: str) -> dict[int, int]:
    """Inverse of :func:`channels_text`; ValueError names the first bad pair
    or a resolution given twice."""
    channels: dict[int, int] = {}
    for part in text.split(","):
        pair = part.strip()
        res, sep, ch = pair.partition(":")
        if not (sep and res.isdigit() and ch.isdigit()):
            raise ValueError(
                "d_channels takes RES:CH pairs, comma-separated "
                f"(32:32,16:64,8:128,4:128); got '{pair}'"
            )
        if int(res) in channels:
            raise ValueError(f"d_channels gives resolution {res} twice")
        channels[int(res)] = int(ch)
    return channels


def option_text(field: str, value) -> str:
    """A field's value as its training option spells it: blocks and
    channels in their own forms, a number with every digit."""
    if field == "biggan_blocks":
        return blocks_text(value)
    if field == "d_channels":
        return channels_text(value)
    return value if isinstance(value, str) else repr(value)


def _late(value) -> dict[str, float]:
    late = {str(k): float(v) for k, v in dict(value or {}).items()}
    unknown = sorted(set(late) - set(LATE_FIELDS))
    if unknown:
        names = ", ".join(map(repr, unknown))
        these = f"settings {names} are" if len(unknown) > 1 else f"setting {names} is"
        raise ValueError(
            f"late {these} not allowed; choose from {', '.join(LATE_FIELDS)}"
        )
    for name, v in late.items():
        _check_weight(f"late {name}", v)
    return late


def _blocks(value) -> tuple[tuple[bool, int, int], ...]:
    return tuple((bool(up), int(c_in), int(c_out)) for up, c_in, c_out in value)


def blocks_text(blocks) -> str:
    """BigGAN-deep blocks as ``--biggan-blocks`` spells them: ``IN-OUT``
    channel multiples, ``u`` after a block that up-samples, comma-separated
    (``16-8,8-4u``)."""
    return ",".join(f"{c_in}-{c_out}{'u' if up else ''}" for up, c_in, c_out in blocks)


def parse_blocks(text: str) -> tuple[tuple[bool, int, int], ...]:
    """Inverse of :func:`blocks_text`; ValueError names the first bad block."""
    blocks = []
    for part in text.split(","):
        block = part.strip()
        up = block.endswith("u")
        c_in, sep, c_out = block.removesuffix("u").partition("-")
        if not (sep and c_in.isdigit() and c_out.isdigit()):
            raise ValueError(
                f"biggan_blocks takes IN-OUT channel multiples with a u after a "
                f"block that up-samples, comma-separated (16-8,8-4u); got '{block}'"
            )
        blocks.append((up, int(c_in), int(c_out)))
    return tuple(blocks)


ARCHS = ("stylegan2", "biggan")
"""Generator architectures the recipe trains."""

BIGGAN_BLOCKS = (
    (False, 16, 16),
    (True, 16, 8),
    (False, 8, 8),
    (True, 8, 4),
    (False, 4, 2),
    (True, 2, 1),
)
"""BigGAN-deep blocks for 32 px: two per resolution, 4 px to 32 px."""


@attrs.frozen(kw_only=True)
class GanConfig:
    """Everything that defines a training run of the shapes generator.

    The defaults are the recipe of the StyleGAN2 shipped before try 8; the
    embedded one adds ``feature_d=2`` and trains 24,850 steps (a default
    that changed would change the meaning of every config saved before);
    ``arch="biggan"`` trains a BigGAN-deep instead, with the ``biggan_``
    fields, and ignores the StyleGAN2-only ones (``n_mlp``, ``lr_mlp``,
    ``g_channels``, ``mixing``, ``pl_*``).
    """

    size: int = 32
    """Image side in pixels."""
    style_dim: int = attrs.field(default=128, validator=_positive)
    """D, the size of z and w."""
    n_mlp: int = 4
    """Layers of the mapping network."""
    lr_mlp: float = 0.01
    """Learning-rate multiplier of the mapping network."""
    g_channels: dict[int, int] = attrs.field(
        factory=lambda: {4: 128, 8: 128, 16: 64, 32: 32}, converter=_int_keys
    )
    """Generator channels per resolution."""
    d_channels: dict[int, int] = attrs.field(
        factory=lambda: {4: 128, 8: 128, 16: 64, 32: 32}, converter=_int_keys
    )
    """Discriminator channels per resolution."""
    conditional: bool = attrs.field(default=True, validator=_switch)
    """Condition G and D on the shape class (one-hot, drawn uniformly)."""
    batch: int = attrs.field(default=16, validator=_positive)
    """Images per step, for D and for G alike."""
    lr: float = attrs.field(default=0.002, validator=_rate)
    """Adam learning rate of G and D (betas 0, 0.99)."""
    r1_gamma: float = attrs.field(default=0.1, validator=_weight)
    """Weight of the R1 penalty on real images."""
    r1_interval: int = attrs.field(default=16, validator=_positive)
    """D steps between lazy R1 steps."""
    pl_weight: float = attrs.field(default=0.0, validator=_weight)
    """Weight of path-length regularisation; 0 turns it off."""
    pl_interval: int = attrs.field(default=4, validator=_positive)
    """G steps between lazy path-length steps."""
    mixing: float = attrs.field(default=0.9, validator=_probability)
    """Probability of style mixing for each generated sample."""
    class_loss: float = attrs.field(default=1.0, validator=_weight)
    """Weight of the auxiliary classification loss (AC-GAN, Odena et al.,
    2017) of a conditional run: D's classifier learns the class of real
    images, G pays its cross-entropy on the asked class; 0 turns it off."""
    mode_seeking: float = attrs.field(default=1.0, validator=_weight)
    """Weight of MSGAN's mode-seeking term (0 turns it off): G pays
    ``weight / ratio`` where ratio is the image distance of two samples of
    one class per unit of their z distance."""
    augment: tuple[str, ...] = attrs.field(
        default=("translation", "cutout"), converter=tuple
    )
    """Differentiable augmentations applied before D, in order."""
    augment_p: float = attrs.field(default=0.5, validator=_probability)
    """Probability of each augmentation, per sample."""
    reuse_fakes: bool = attrs.field(default=False, validator=_switch)
    """G's step trains on the images D's step has just judged (drawn once,
    with gradients) instead of drawing a second batch: one forward of G a
    step, not two. Mode seeking's pairs of a class are then D's too."""
    ema_kimg: float = attrs.field(default=10.0, validator=_positive)
    """Half-life of G's moving average, in thousands of images."""
    ema_rampup: float = 0.05
    """Half-life at most this share of the images seen so far (or 0)."""
    mbstd_group: int = 32
    """Group size of the minibatch standard-deviation layer."""
    mbstd_by: str = attrs.field(
        default="batch", validator=attrs.validators.in_(("batch", "class"))
    )
    """What that layer's spread is taken over, in D and the feature heads:
    ``batch`` (groups of up to ``mbstd_group`` samples, every class mixed)
    or ``class`` (the samples of each class in the batch): a G that draws
    one image per class, changing it as D catches up, shows in the second
    and hides in the first."""
    seed: int = 0
    """Seeds every random stream of the run."""
    minutes: float | None = attrs.field(default=None, validator=_positive)
    """Also stop after this much training wall time (in total, over
    resumes); a time limit makes the result depend on the machine."""
    steps: int | None = attrs.field(default=18_000, validator=_positive)
    """Stop after this many steps (in total)."""
    checkpoint_minutes: float = 5.0
    """Wall time between checkpoints."""
    sample_minutes: float = 5.0
    """Wall time between sample grids and collapse checks."""
    log_every: int = 50
    """Steps between log lines."""
    arch: str = attrs.field(default="stylegan2", validator=attrs.validators.in_(ARCHS))
    """The generator: ``stylegan2`` or ``biggan`` (BigGAN-deep)."""
    biggan_width: int = attrs.field(default=16, validator=_positive)
    """BigGAN-deep ``channel_width``: block channels are multiples of it."""
    biggan_blocks: tuple[tuple[bool, int, int], ...] = attrs.field(
        default=BIGGAN_BLOCKS, converter=_blocks
    )
    """BigGAN-deep blocks: (up-sample, in multiple, out multiple) each."""
    biggan_attention: int = 4
    """Block the self-attention precedes (-1: none); 4 is at 16 px."""
    biggan_lr: float = attrs.field(default=0.0002, validator=_rate)
    """Adam learning rate of a BigGAN-deep G (D keeps ``lr``)."""

    feature_d: float = attrs.field(default=0.0, validator=_weight)
    """Weight of the discriminator heads on a frozen, separately trained
    network's features (:mod:`lclr_shapes.gan.features`); 0 turns them
    off."""
    feature_class: float = attrs.field(default=0.0, validator=_weight)
    """Weight of a class loss read by that frozen network (needs
    ``feature_d``): G pays the cross-entropy of its shape logits on G's
    unaugmented images against the asked class. D's AC-GAN head reads
    D's body, whose features move at every step; this network's never
    do. 0 turns it off."""
    feature_render: float = attrs.field(default=0.0, validator=_weight)
    """Weight of a re-render loss read by that frozen network (needs
    ``feature_d``): the network reads the continuous factors (place,
    size, turn, hue, background) off G's unaugmented image, the renderer
    draws them as the asked class, and G pays its squared distance to
    that drawing (:func:`~lclr_shapes.gan.features.render_distance`; the
    drawing is a fixed target). It teaches the outline a class has where
    G draws it, which the adversarial losses teach only slowly. The
    synthetic world's own renderer makes it possible; a GAN of photos
    has nothing like it. 0 turns it off."""
    feature_width: int = attrs.field(default=8, validator=_positive)
    """Width of that network (a factor predictor; the evaluator's is 16)."""
    feature_steps: int = attrs.field(default=3000, validator=_positive)
    """Supervised steps (batch 64) that train it before the GAN starts;
    their wall time counts into the run's minutes."""
    feature_hidden: int = attrs.field(default=64, validator=_positive)
    """Channels and units of each discriminator head on that network's
    features (:class:`~lclr_shapes.gan.features.FeatureHeads`)."""

    late_from: int | None = attrs.field(default=None, validator=_positive)
    """Steps trained with the early settings; the ``late`` ones replace
    them for every step after (``None``: one phase)."""
    late: dict[str, float] = attrs.field(factory=dict, converter=_late)
    """Settings (of :data:`LATE_FIELDS`) that take new values from step
    ``late_from`` on: strong diversity pressure while G finds its modes,
    then weaker regularisation while it sharpens them."""

    def __attrs_post_init__(self):
        if self.late and self.late_from is None:
            raise ValueError("late settings need late_from, the step they start at")
        if self.late_from is not None and not self.late:
            raise ValueError("late_from needs at least one late setting")
        if "r1_gamma" in self.late and bool(self.late["r1_gamma"]) != bool(
            self.r1_gamma
        ):
            todo = (
                "give the late r1_gamma a value above 0"
                if self.r1_gamma
                else "R1 is off in this run (r1_gamma 0), so drop the late r1_gamma"
            )
            raise ValueError(f"a late r1_gamma cannot switch R1 on or off; {todo}")
        if "augment_p" in self.late and not 0.0 <= self.late["augment_p"] <= 1.0:
            raise ValueError("late augment_p must be in [0, 1]")
        if self.feature_class and not self.feature_d:
            raise ValueError(
                "feature_class reads the feature network, which only feature_d "
                "trains; give feature_d a weight above 0 too"
            )
        if self.batch < 2 and (self.mode_seeking or self.late.get("mode_seeking")):
            # found by a tester: batch 1 has no pair, and its ratio was NaN
            raise ValueError(
                "mode_seeking compares pairs of samples of a batch, so it needs "
                f"a batch of 2 or more (batch is {self.batch}); set it to 0 or "
                "train with a larger batch"
            )
        if self.mbstd_by == "class" and not self.conditional:
            raise ValueError("mbstd_by class needs a conditional run (classes)")
        if self.feature_class and not self.conditional:
            raise ValueError("feature_class needs a conditional run (classes)")
        # paid from the start, or switched on at late_from (named as given)
        for name, weight in (
            ("feature_render", self.feature_render),
            ("late feature_render", self.late.get("feature_render")),
        ):
            if weight and not self.feature_d:
                raise ValueError(
                    f"{name} reads the feature network, which only feature_d "
                    "trains; give feature_d a weight above 0 too"
                )
            if weight and not self.conditional:
                raise ValueError(f"{name} needs a conditional run (classes)")
        # a setting this run would not use is refused, not silently kept
        defaults = attrs.fields_dict(GanConfig)
        changed = [n for n in USED_ONLY_WITH if getattr(self, n) != defaults[n].default]
        refuse_unused(self, changed)
        want = [self.size >> i for i in range(self.size.bit_length())]
        want = [res for res in want if res >= 4]
        if set(self.d_channels) != set(want) or min(self.d_channels.values()) < 1:
            raise ValueError(
                f"d_channels must give every resolution from {self.size} down to "
                f"4 ({', '.join(map(str, want))}) a channel count of 1 or more, "
                f"got {channels_text(self.d_channels)}"
            )
        if self.arch == "biggan" and not self.conditional:
            raise ValueError("arch biggan is class-conditional; keep conditional")
        if self.arch == "biggan":
            from lclr_shapes.gan.biggan import biggan_config

            biggan_config(self)  # an architecture the format can hold
            # the format reads any other number as "none"; a recipe says so
            last = len(self.biggan_blocks) - 1
            if not -1 <= self.biggan_attention <= last:
                raise ValueError(
                    f"biggan_attention must be -1 (none) or a block from 0 to "
                    f"{last}, got {self.biggan_attention}"
                )
        if self.arch == "biggan" and self.pl_weight:
            raise ValueError(
                "pl_weight (path-length regularisation) is for arch stylegan2 "
                "only; drop it for arch biggan"
            )

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True)

    def at_step(self, step: int) -> GanConfig:
        """The settings in force at ``step`` (the late ones from
        ``late_from`` on)."""
        if self.late_from is None or step < self.late_from:
            return self
        return attrs.evolve(self, late_from=None, late={}, **self.late)

    @classmethod
    def from_json(cls, text: str) -> GanConfig:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))
