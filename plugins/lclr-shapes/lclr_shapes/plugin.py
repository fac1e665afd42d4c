"""lclr plugin hooks: the ``shapes`` evaluator and the ``lclr shapes``
commands. Nothing here imports torch; the commands import it when run."""

from __future__ import annotations

from pathlib import Path

import click

from lclr.hookspecs import hookimpl
from lclr_shapes.options import ShapesEvalOptions


def create_evaluator(options=None):
    """Factory for ``shapes``: scores directions against the true factors."""
    from lclr_shapes.evaluator import ShapesEvaluator

    return ShapesEvaluator(options)


def _png_path(ctx, param, value: Path | None) -> Path | None:
    """Refuse an image path whose name does not end in .png, before any work."""
    if value is not None and value.suffix.lower() != ".png":
        raise click.BadParameter(f"'{value}' is not a .png name; end it in .png")
    return value


@hookimpl
def lclr_register_evaluators(register):
    """Register the ``shapes`` evaluator."""
    register(
        "shapes",
        create_evaluator,
        options=ShapesEvalOptions,
        summary="per-direction change of the shapes world's known factors",
    )


# Commands ------------------------------------------------------------------


@click.group("shapes")
def shapes():
    """The procedural shapes world: renders, predictor, quality bar, GAN."""


@shapes.command("train-predictor")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("predictor.pt"),
    show_default=True,
    help="Weights file; the figures go beside it as .json.",
)
@click.option("--steps", type=int, default=8000, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def train_predictor(out, steps, batch_size, seed, threads, force):
    """Train the factor predictor from scratch and measure it held out."""
    from lclr.errors import ConfigError
    from lclr_shapes.predictor import train_and_save

    if steps < 1 or batch_size < 2 or threads < 1:
        raise ConfigError("--steps and --threads must be >= 1, --batch-size >= 2")
    report = train_and_save(out, steps, batch_size, seed, threads, replace=force)
    held = report["held_out"]
    click.echo(f"class accuracy  {held['class_accuracy']:.4f}")
    for name, value in held["r2"].items():
        click.echo(f"R2 {name:<12} {value:.4f}")
    click.echo(f"weights         {out}")


@shapes.command("quality")
@click.option(
    "--weights",
    type=click.Path(),
    default=None,
    help="StyleGAN2 checkpoint or BigGAN weights folder [default: the "
    "generator's embedded one].",
)
@click.option(
    "-n", "n", type=int, default=1000, show_default=True, help="Samples (>= 100)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--source",
    "--generator",
    "source",
    type=click.Choice(["stylegan2", "biggan", "real", "noise", "blend"]),
    default="stylegan2",
    show_default=True,
    help="What to measure: a generator, or a reference source.",
)
@click.option(
    "--truncation",
    type=float,
    default=1.0,
    show_default=True,
    help="psi of a biggan source (codes and batch-norm statistics).",
)
@click.option("--predictor", type=click.Path(dir_okay=False), default=None)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the full report here.",
)
@click.option(
    "--grid",
    "grid_path",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_png_path,
    default=None,
    help="Also write a PNG of samples above their re-renders, by shape, "
    "from the lowest error to the highest.",
)
def quality(weights, n, seed, source, truncation, predictor, json_path, grid_path):
    """Measure a generator against the shapes world's quality bar.

    Exits with status 1 when the source fails the bar.
    """
    import json

    from lclr.errors import ConfigError
    from lclr_shapes.quality import quality_of_source, summary_lines

    if n < 100:
        raise ConfigError(f"-n must be at least 100; got {n}")
    if weights is not None and source not in ("stylegan2", "biggan"):
        raise ConfigError(f"--weights is for a generator, not --source {source}")
    if truncation != 1.0 and source != "biggan":
        raise ConfigError(f"--truncation is for --generator biggan, not {source}")
    both = grid_path is not None and json_path is not None
    if both and grid_path.resolve() == json_path.resolve():
        raise ConfigError("--grid and --json name the same file; give two names")
    for path in (json_path, grid_path):
        if path is not None:  # before the minutes of measuring, not after
            path.parent.mkdir(parents=True, exist_ok=True)
    report = quality_of_source(
        source,
        weights=weights,
        n=n,
        seed=seed,
        predictor_weights=predictor,
        truncation=truncation,
        grid=grid_path,
    )
    for line in summary_lines(report):
        click.echo(line)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"report        {json_path}")
    if not report["pass"]:
        # a measurement, not an error: the report is out, the status says FAIL
        raise SystemExit(1)


@shapes.command("preview")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_png_path,
    default=Path("shapes_preview.png"),
    show_default=True,
)
@click.option("--rows", type=int, default=8, show_default=True)
@click.option("--cols", type=int, default=8, show_default=True)
@click.option("--size", type=int, default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--zoom", type=int, default=2, show_default=True)
def preview(out, rows, cols, size, seed, zoom):
    """Write a PNG grid of random renders."""
    from lclr.errors import ConfigError
    from lclr_shapes.preview import write_grid

    if rows < 1 or cols < 1 or zoom < 1 or not 4 <= size <= 128:
        raise ConfigError("--rows, --cols, --zoom >= 1 and --size in 4..128")
    write_grid(out, rows=rows, cols=cols, size=size, seed=seed, zoom=zoom)
    click.echo(str(out))


def _add_gan_commands(group: click.Group) -> None:
    # The GAN recipe's commands live in lclr_shapes.gan.cli.
    from lclr_shapes.gan.cli import export_gan, train_gan

    group.add_command(train_gan)
    group.add_command(export_gan)


_add_gan_commands(shapes)


@hookimpl
def lclr_register_commands(cli):
    """Add ``lclr shapes ...``."""
    cli.add_command(shapes)
