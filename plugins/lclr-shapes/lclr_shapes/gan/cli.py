"""Command-line entry points of the GAN recipe (click).

``train_gan`` and ``export_gan`` are plain click commands; the shapes
plugin adds them to ``lclr shapes``, and ``python -m
lclr_shapes.gan.train`` / ``python -m lclr_shapes.gan.export`` run them
directly. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import click


def main(command: click.Command, prog_name: str) -> None:
    """Run ``command`` as a program: lclr's errors end in one line.

    The same handling ``lclr`` gives its commands, for ``python -m``.
    """
    from lclr.cli import usage_line
    from lclr.errors import LclrError

    try:
        command.main(prog_name=prog_name, standalone_mode=False)
    except click.UsageError as exc:
        click.echo(usage_line(exc, prog_name), err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("Error: interrupted", err=True)
        sys.exit(130)
    except LclrError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"Error: {exc.strerror or exc}{where}", err=True)
        sys.exit(6)


def _log_to(path: Path, quiet: bool) -> None:
    """Send the ``lclr_shapes`` logs to ``path`` (and stderr unless quiet)."""
    fmt = logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S")
    log = logging.getLogger("lclr_shapes")
    log.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [logging.FileHandler(path)]
    if not quiet:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)


def _late_settings(pairs: tuple[str, ...]) -> dict[str, float]:
    """``NAME=VALUE`` strings as a dict of floats; one line if malformed."""
    from lclr.errors import ConfigError

    late = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError
            number = float(value)
        except ValueError:
            raise ConfigError(
                f"--late takes NAME=VALUE with a number, got '{pair}'"
            ) from None
        if name in late:
            raise ConfigError(f"--late {name} given twice; give each setting once")
        late[name] = number
    return late


def _parsed(text: str | None, parse):
    """An option's text through the config's ``parse`` (``parse_blocks``,
    ``parse_channels``); one line if malformed."""
    from lclr.errors import ConfigError

    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise ConfigError(_in_flags(str(exc))) from None


def _same_as_saved(saved, given: dict, out: Path) -> None:
    """Refuse settings given with --resume that differ from the run's own
    (a resumed run keeps its config; only --steps and --minutes change)."""
    from lclr.errors import ConfigError
    from lclr_shapes.gan.config import FLAGS

    for key, value in given.items():
        if value != getattr(saved, key):
            raise ConfigError(
                f"{out} holds a run trained with {_as_options(key, saved)}; a "
                f"resumed run keeps its settings: drop {FLAGS[key]} or choose "
                "another --out"
            )


def _as_options(key: str, config) -> str:
    """A saved setting as the options that would give it."""
    from lclr_shapes.gan.config import FLAGS, option_text

    value = getattr(config, key)
    if key == "late":
        pairs = [f"--late {name}={v:g}" for name, v in value.items()]
        return " ".join(pairs) or "no --late settings"
    if value is None:
        return f"no {FLAGS[key]}"
    if isinstance(value, bool):
        return FLAGS[key] if value else f"no {FLAGS[key]}"
    return f"{FLAGS[key]} {option_text(key, value)}"


def _in_flags(message: str) -> str:
    """A config error that names fields, reworded to name their options:
    the field it starts with, and any other field spelt with an underscore
    that only an option sets (a name --late also takes stays a name)."""
    import re

    from lclr_shapes.gan.config import FLAGS, LATE_FIELDS

    flags = {**FLAGS, "minutes": "--minutes", "steps": "--steps"}
    field = message.split(" ", 1)[0]
    if field in flags:
        message = flags[field] + message[len(field) :]
    named = [f for f in FLAGS if "_" in f and f not in LATE_FIELDS]
    # a name in quotes is as the user typed it (a --late NAME), kept
    pattern = r"(?<!')\b(" + "|".join(named) + r")\b(?!')"
    message = re.sub(pattern, lambda m: flags[m.group(1)], message)
    # "arch biggan" is the option with its value (in quotes: as typed)
    return re.sub(r"(?<![-'])\barch (?=\w)", "--arch ", message)


def _check_left_to_do(out: Path, config, step: int, elapsed: float) -> None:
    """Refuse a resume that would train no step: the run already has the
    ``config``'s steps or minutes (the saved totals or the given ones)."""
    from lclr.errors import ConfigError
    from lclr_shapes.gan.train import limit_reached

    reached = limit_reached(config, step, elapsed)
    if reached == "steps":
        raise ConfigError(
            f"the run in {out} has trained {step} steps already; give "
            f"--steps above {step} to train on"
        )
    if reached == "minutes":
        # a figure to give, rounded up: one the run has not reached yet
        more = (math.floor(elapsed / 60 * 100) + 1) / 100
        raise ConfigError(
            f"the run in {out} has trained {elapsed / 60:.4g} minutes already; "
            f"give --minutes {more:.2f} or more to train on"
        )


def config_fields(
    *,
    arch,
    seed,
    batch_size,
    r1_gamma,
    pl_weight,
    biggan_width,
    late_from,
    late,
    feature_d=None,
    feature_class=None,
    feature_render=None,
    feature_width=None,
    feature_steps=None,
    ema_kimg=None,
    biggan_lr=None,
    mode_seeking=None,
    mbstd_by=None,
    z_dim=None,
    biggan_blocks=None,
    biggan_attention=None,
    reuse_fakes=False,
    feature_hidden=None,
    d_channels=None,
    augment_p=None,
) -> dict:
    """The GanConfig fields that train-gan's options set (those given)."""
    from lclr_shapes.gan.config import parse_blocks, parse_channels

    given = {
        "arch": arch,
        "seed": seed,
        "batch": batch_size,
        "r1_gamma": r1_gamma,
        "pl_weight": pl_weight,
        "biggan_width": biggan_width,
        "style_dim": z_dim,
        "biggan_blocks": _parsed(biggan_blocks, parse_blocks),
        "biggan_attention": biggan_attention,
        "feature_d": feature_d,
        "feature_class": feature_class,
        "feature_render": feature_render,
        "feature_width": feature_width,
        "feature_steps": feature_steps,
        "feature_hidden": feature_hidden,
        "d_channels": _parsed(d_channels, parse_channels),
        "ema_kimg": ema_kimg,
        "reuse_fakes": reuse_fakes or None,  # a switch: given only when on
        "biggan_lr": biggan_lr,
        "mode_seeking": mode_seeking,
        "augment_p": augment_p,
        "mbstd_by": mbstd_by,
        "late_from": late_from,
        "late": _late_settings(late) or None,
    }
    return {k: v for k, v in given.items() if v is not None}


@click.command("train-gan")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Run folder for checkpoints, logs and samples.",
)
@click.option(
    "--arch",
    type=click.Choice(["stylegan2", "biggan"]),
    default=None,
    help="Generator: stylegan2 or biggan (BigGAN-deep) [default: stylegan2; "
    "a resumed run keeps its own].",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Total steps, over all resumes [default: 18000; a resumed run: "
    "its own total].",
)
@click.option(
    "--minutes",
    type=float,
    default=None,
    help="Also stop after this much training wall time, in total (optional; "
    "a resumed run keeps its own limit).",
)
@click.option("--seed", type=int, default=None, help="[default: 0]")
@click.option("--batch-size", type=int, default=None, help="[default: 16]")
@click.option("--r1-gamma", type=float, default=None, help="R1 weight [0.1].")
@click.option(
    "--pl-weight", type=float, default=None, help="Path-length weight [0: off]."
)
@click.option(
    "--mode-seeking",
    type=click.FloatRange(min=0),
    default=None,
    help="Weight of the mode-seeking term, G's diversity push [1.0; 0: off].",
)
@click.option(
    "--augment-p",
    type=click.FloatRange(0, 1),
    default=None,
    help="Chance of each augmentation (translation, cutout) per image before "
    "D [0.5; 0: D sees the images as drawn].",
)
@click.option(
    "--late-from",
    type=click.IntRange(min=1),
    default=None,
    help="Steps trained before the --late settings apply.",
)
@click.option(
    "--late",
    "late",
    multiple=True,
    metavar="NAME=VALUE",
    help="A setting that changes after --late-from steps (repeatable): "
    "mode_seeking, r1_gamma, augment_p, class_loss or feature_render, a "
    "finite number >= 0.",
)
@click.option(
    "--biggan-width",
    type=click.IntRange(min=1),
    default=None,
    help="BigGAN-deep channel_width [16].",
)
@click.option(
    "--biggan-blocks",
    default=None,
    metavar="IN-OUT,...",
    help="BigGAN-deep blocks: channel multiples of --biggan-width in and "
    "out, u after a block that up-samples [16-16,16-8u,8-8,8-4u,4-2,2-1u].",
)
@click.option(
    "--biggan-attention",
    type=click.IntRange(min=-1),
    default=None,
    help="BigGAN-deep block the self-attention comes before [4; -1: none].",
)
@click.option(
    "--z-dim",
    type=click.IntRange(min=1),
    default=None,
    help="Size of z: StyleGAN2's z and w, BigGAN-deep's z and class embedding [128].",
)
@click.option(
    "--biggan-lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Adam learning rate of a BigGAN-deep G [0.0002]; D keeps 0.002.",
)
@click.option(
    "--feature-d",
    type=float,
    default=None,
    help="Weight of the discriminator heads on a frozen, separately "
    "trained shapes network's features [0: off].",
)
@click.option(
    "--feature-class",
    type=float,
    default=None,
    help="Weight of the frozen network's class loss on G's images; "
    "needs --feature-d [0: off].",
)
@click.option(
    "--feature-render",
    type=float,
    default=None,
    help="Weight of G's squared distance to a render of the factors the "
    "frozen network reads off its images; needs --feature-d [0: off].",
)
@click.option(
    "--feature-width",
    type=click.IntRange(min=1),
    default=None,
    help="Width of that network, a factor predictor [8].",
)
@click.option(
    "--feature-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Its supervised training steps before the GAN's, batch 64 [3000].",
)
@click.option(
    "--feature-hidden",
    type=click.IntRange(min=1),
    default=None,
    help="Channels of each discriminator head on that network's features [64].",
)
@click.option(
    "--d-channels",
    default=None,
    metavar="RES:CH,...",
    help="D's channels at each resolution, 32 px down to 4 [32:32,16:64,8:128,4:128].",
)
@click.option(
    "--ema-kimg",
    type=float,
    default=None,
    help="Half-life of G's moving average, in thousands of images [10].",
)
@click.option(
    "--reuse-fakes",
    is_flag=True,
    help="G's step trains on the images D's step judged: one forward of G "
    "a step instead of two [off].",
)
@click.option(
    "--mbstd-by",
    type=click.Choice(["batch", "class"]),
    default=None,
    help="What D's minibatch standard deviation is taken over: groups of "
    "the batch, or the samples of each class, which shows D a class drawn "
    "one way [batch].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="torch CPU threads.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out.")
@click.option("-q", "--quiet", is_flag=True, help="Log to the folder only.")
def train_gan(
    out,
    arch,
    minutes,
    steps,
    seed,
    batch_size,
    r1_gamma,
    pl_weight,
    mode_seeking,
    augment_p,
    late_from,
    late,
    biggan_width,
    biggan_blocks,
    biggan_attention,
    z_dim,
    biggan_lr,
    feature_d,
    feature_class,
    feature_render,
    feature_width,
    feature_steps,
    feature_hidden,
    d_channels,
    ema_kimg,
    reuse_fakes,
    mbstd_by,
    threads,
    resume,
    quiet,
):
    """Train the shapes GAN (class-conditional, 32 px) on CPU: a StyleGAN2,
    or with --arch biggan a BigGAN-deep."""
    import torch

    from lclr.errors import ConfigError
    from lclr_shapes.gan.config import GanConfig, refuse_unused
    from lclr_shapes.gan.train import train

    torch.set_num_threads(threads)
    given = config_fields(
        arch=arch, seed=seed, batch_size=batch_size, r1_gamma=r1_gamma,
        pl_weight=pl_weight, biggan_width=biggan_width, late_from=late_from,
        late=late, feature_d=feature_d, feature_class=feature_class,
        feature_render=feature_render, feature_width=feature_width,
        feature_steps=feature_steps, ema_kimg=ema_kimg, biggan_lr=biggan_lr,
        mode_seeking=mode_seeking, mbstd_by=mbstd_by, z_dim=z_dim,
        biggan_blocks=biggan_blocks, biggan_attention=biggan_attention,
        reuse_fakes=reuse_fakes, feature_hidden=feature_hidden,
        d_channels=d_channels, augment_p=augment_p,
    )  # fmt: skip
    from lclr_shapes.gan.train import LOG, check_new_folder, load_checkpoint

    limits = {"minutes": minutes, "steps": steps}
    if resume:
        # one clear line when there is nothing to resume, or other settings
        state = load_checkpoint(out, click.get_current_context().command_path)
        saved = GanConfig.from_json(state["config"])
        _same_as_saved(saved, given, out)
        given = {}
        # the run's own totals unless new ones are given
        limits = {k: getattr(saved, k) if v is None else v for k, v in limits.items()}
    else:
        limits = {k: v for k, v in limits.items() if v is not None}
    try:
        config = GanConfig(**limits, **given)
        # given at its default value, an unused option is refused too
        refuse_unused(config, given)
    except ValueError as exc:
        raise ConfigError(_in_flags(str(exc))) from exc
    if resume:
        _check_left_to_do(out, config, int(state["step"]), float(state["elapsed"]))
    if not resume:
        check_new_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    _log_to(out / LOG, quiet)
    # hints to resume name the command used: python -m ... or lclr shapes ...
    command = click.get_current_context().command_path
    trainer = train(config, out, resume=resume, command=command)
    click.echo(
        f"{trainer.step} steps, {trainer.nimg / 1000:.1f} kimg, "
        f"{trainer.elapsed / 60:.1f} min; checkpoint in {out}"
    )


@click.command("export-gan")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--to",
    "dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for NAME.pt (stylegan2) or NAME/ (biggan), and NAME.json "
    "[default: the weights folder of lclr-stylegan2 or lclr-biggan].",
)
@click.option("--name", default="shapes32", show_default=True)
@click.option(
    "--measure",
    is_flag=True,
    help="Also measure the exported generator against the quality bar "
    "(n=1000, seed 0) and record the figures in NAME.json.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace NAME's files if they exist (the default "
    "--to holds the shipped generators).",
)
@click.option(
    "--raw",
    is_flag=True,
    help="Export G as the last step left it instead of its moving average "
    "(a diagnostic: what the average blurs).",
)
def export_gan(run_dir, dest, name, measure, force, raw):
    """Export a run's moving-average generator as weights of its plugin:
    StyleGAN2 or BigGAN-deep (config.json + pytorch_model.bin)."""
    from lclr_shapes.gan.export import export, record_quality

    weights, info = export(run_dir, dest, name=name, force=force, raw=raw)
    click.echo(str(weights))
    click.echo(str(info))
    if measure:
        arch = json.loads(info.read_text())["config"]["arch"]
        quality = record_quality(info, weights, arch)
        verdict = "PASS" if quality["passes"] else "FAIL"
        click.echo(f"quality {verdict}: {quality['good_share']:.1%} good; in {info}")
