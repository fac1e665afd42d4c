"""lclr plugin hooks: registers the ``stylegan2`` generator.

Importing this module must stay cheap (``lclr --help`` loads it), so torch
and the network are imported inside the factory only.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import click

from lclr.errors import ConfigError
from lclr.hookspecs import hookimpl


def _in(*allowed):
    """Validator: the value is one of ``allowed``."""

    def check(inst, attribute, value):
        if value not in allowed:
            raise ConfigError(
                f"{attribute.name} must be one of {', '.join(map(repr, allowed))}"
                f", got {value!r}"
            )

    return check


def _psi(inst, attribute, value):
    """Validator: truncation psi in (0, 1]."""
    if not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(f"truncation must be in (0, 1], got {value!r}")


def _positive_or_none(inst, attribute, value):
    """Validator: a positive int, or None to infer it from the weights."""
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{attribute.name} must be a positive integer, got {value!r}")


def _c_dim(inst, attribute, value):
    """Validator: number of classes, 0 for unconditional, or None."""
    if value is not None and (not isinstance(value, int) or value < 0):
        raise ConfigError(f"c_dim must be an integer >= 0, got {value!r}")


def _size(inst, attribute, value):
    """Validator: a power of two >= 8, or None."""
    if value is not None and (
        not isinstance(value, int) or value < 8 or value & (value - 1)
    ):
        raise ConfigError(f"size must be a power of two >= 8, got {value!r}")


def _clamp(inst, attribute, value):
    """Validator: a positive number, or None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is not None and not (ok and value > 0):
        raise ConfigError(f"conv_clamp must be a positive number, got {value!r}")


def _label(inst, attribute, value):
    """Validator: a class index, a class name, or None."""
    if value is not None and not isinstance(value, (int, str)):
        raise ConfigError(f"class_label must be an index or a name, got {value!r}")


@attrs.frozen(kw_only=True)
class StyleGAN2Options:
    """Options of the ``stylegan2`` generator.

    The architecture fields are normally inferred from the weights; state
    them only for a checkpoint that cannot be inferred or to check one.
    """

    space: str = attrs.field(
        default="w", validator=_in("w", "z"), metadata={"help": "edit in W or Z"}
    )
    truncation: float = attrs.field(
        default=1.0,
        converter=float,
        validator=_psi,
        metadata={"help": "psi: pull sampled w towards the average w"},
    )
    truncation_cutoff: int | None = attrs.field(
        default=None,
        validator=_positive_or_none,
        metadata={"help": "truncate only the first N per-layer codes"},
    )
    class_label: int | str | None = attrs.field(
        default=None,
        validator=_label,
        metadata={"help": "class index or name; unset: random per sample"},
    )
    noise_seed: int = attrs.field(
        default=0,
        converter=int,
        metadata={"help": "seed of the fixed noise when the weights have none"},
    )
    size: int | None = attrs.field(
        default=None, validator=_size, metadata={"help": "output resolution"}
    )
    style_dim: int | None = attrs.field(
        default=None, validator=_positive_or_none, metadata={"help": "D"}
    )
    n_mlp: int | None = attrs.field(
        default=None,
        validator=_positive_or_none,
        metadata={"help": "mapping layers"},
    )
    channel_multiplier: int | None = attrs.field(
        default=None,
        validator=_positive_or_none,
        metadata={"help": "2 for config-f"},
    )
    c_dim: int | None = attrs.field(
        default=None, validator=_c_dim, metadata={"help": "number of classes"}
    )
    conv_clamp: float | None = attrs.field(
        default=None,
        validator=_clamp,
        metadata={"help": "clamp layer outputs to +-X (256 for ADA nets)"},
    )

    def arch(self) -> dict:
        """The stated architecture fields (those not None)."""
        from .loading import ARCH_FIELDS  # torch only once a model is built

        values = {n: getattr(self, n) for n in ARCH_FIELDS}
        return {n: v for n, v in values.items() if v is not None}


def create_stylegan2(weights=None, options=None):
    """Factory: a frozen StyleGAN2 generator; ``weights=None`` is embedded."""
    from .generator import load_generator

    opts = options if options is not None else StyleGAN2Options()
    return load_generator(
        weights,
        space=opts.space,
        truncation=opts.truncation,
        class_label=opts.class_label,
        noise_seed=opts.noise_seed,
        arch=opts.arch(),
        truncation_cutoff=opts.truncation_cutoff,
    )


@hookimpl
def lclr_register_generators(register):
    """Register ``stylegan2``."""
    register(
        "stylegan2",
        create_stylegan2,
        options=StyleGAN2Options,
        summary="StyleGAN2 (W/W+/Z), plain PyTorch; default: shapes 32px",
    )


@click.command("export-generator")
@click.argument("weights", type=click.Path())
@click.argument("out", type=click.Path())
@click.option(
    "--class-names",
    help="Comma-separated class names of a conditional generator, stored "
    "with it so that --class NAME works.",
)
@click.option(
    "-G",
    "--generator-option",
    multiple=True,
    help="KEY=VALUE stylegan2 option (e.g. conv_clamp=256, noise_seed=1).",
)
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def export_generator(weights, out, class_names, generator_option, force):
    """Convert StyleGAN2 WEIGHTS to lclr's own format, OUT (.safetensors).

    WEIGHTS is anything --weights takes: the PyTorch port's .pt (also its
    training snapshots), an NVIDIA .pkl, a bare state dict. The result
    holds the architecture and the average w, and loads without conversion.
    """
    from lclr.cli import parse_options
    from lclr.registry import get_registry

    from .loading import save_generator

    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"'{out}' exists; pass --force to overwrite it")
    options = parse_options(generator_option, "generator")
    gen = get_registry().build("generator", "stylegan2", options, weights=weights)
    names = gen.class_names
    if class_names is not None:
        names = [n.strip() for n in class_names.split(",") if n.strip()]
        if len(names) != gen.model.c_dim:
            raise ConfigError(
                f"--class-names has {len(names)} names; the generator has "
                f"{gen.model.c_dim} classes"
            )
    meta = {"source": gen.info.get("source", "torch"), "from": Path(weights).name}
    if names:
        meta["class_names"] = list(names)
    save_generator(out, gen.model, gen.latent_avg, meta)
    click.echo(str(out))


@hookimpl
def lclr_register_commands(cli):
    """Add ``lclr export-generator``."""
    cli.add_command(export_generator)
