"""The ``lclr`` command line.

Errors a user can cause (:class:`lclr.errors.LclrError`) end in one line on
stderr and a non-zero exit; anything else is a bug and keeps its traceback.
Heavy imports (torch) happen inside the commands, so ``lclr --help`` is fast.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import click

from lclr.errors import ConfigError, LclrError, os_error_line
from lclr.hookspecs import hookimpl

log = logging.getLogger("lclr")

# How a run computes, not what it learns: may change when resuming.
HOW = ("device", "chunk_size", "max_memory", "autocast", "channels_last", "compile")
# --weights too: the file may have moved (its SHA-256 must match the run's)
RESUMABLE = {"iterations", "resume", "no_render", "weights", *HOW}


class LclrGroup(click.Group):
    """A group that adds plugins' commands on first use and turns lclr's
    errors into one line each."""

    _plugins_added = False

    def _add_plugin_commands(self):
        if self._plugins_added:
            return
        self._plugins_added = True
        from lclr.registry import get_registry

        try:
            get_registry().pm.hook.lclr_register_commands(cli=self)
        except LclrError as exc:
            log.debug("plugin commands unavailable: %s", exc)

    def list_commands(self, ctx):
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, name)
        return command

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a bare group prints its help, as click does
        except click.UsageError as exc:
            # a bad option of lclr itself (those of commands: invoke below)
            click.echo(usage_line(exc, info_name or "lclr"), err=True)
            sys.exit(exc.exit_code)

    def invoke(self, ctx):
        # the words naming the command, read before click consumes them
        words = [*ctx._protected_args, *ctx.args]
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            # a bad option or value of a command: one line, not click's
            # usage block, naming where the options are listed
            click.echo(usage_line(exc, _command_path(ctx, words)), err=True)
            ctx.exit(exc.exit_code)
        except LclrError as exc:
            click.echo(f"Error{_rank_note()}: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            ctx.exit(130)
        except OSError as exc:
            # A file system refusal (read-only, not a folder, disk full...).
            click.echo(f"Error: {os_error_line(exc)}", err=True)
            ctx.exit(6)


def usage_line(exc: click.UsageError, command_path: str) -> str:
    """A bad option or value as one line that says where the options are
    listed (``command_path`` when the error carries no context)."""
    where = exc.ctx.command_path if exc.ctx is not None else command_path
    message = exc.format_message().rstrip()
    # "... (Did you mean '--seed'?)" ends a sentence; "... argument (b)" not
    stop = "" if message.rstrip(")").endswith((".", "?", "!")) else "."
    return f"Error: {message}{stop} See '{where} --help'."


def _command_path(ctx: click.Context, words: list[str]) -> str:
    """The path of the command ``words`` name under ``ctx``'s group (an
    option given no value raises an error that carries no context)."""
    command, path = ctx.command, [ctx.command_path]
    for word in words:
        if not isinstance(command, click.Group):
            break
        command = command.get_command(ctx, word)
        if command is None:
            break
        path.append(word)
    return " ".join(path)


@click.group(cls=LclrGroup)
@click.version_option(package_name="lclr")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors, no progress bar.")
@click.pass_context
def cli(ctx, verbose, quiet):
    """Find interpretable edit directions in pre-trained GANs (LatentCLR)."""
    level = logging.ERROR if quiet else [logging.WARNING, logging.INFO][min(verbose, 1)]
    if verbose > 1:
        level = logging.DEBUG
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
    ctx.obj = {"quiet": quiet}


def parse_options(pairs: tuple[str, ...], what: str) -> dict:
    """``KEY=VALUE`` pairs → a dict; values are read as JSON when they can be."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} option '{pair}' must look like KEY=VALUE")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``"0-3,6"`` → (0, 1, 2, 3, 6)."""
    if text is None:
        return None
    out = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            lo, hi = int(lo), int(hi or lo)
            if hi < lo:
                raise ValueError
            out += range(lo, hi + 1)
    except ValueError:
        raise ConfigError(f"--edit-layers '{text}' must look like 0-3,6") from None
    return tuple(sorted(set(out)))


def parse_steps(text: str) -> tuple[int, ...]:
    """``"1000,5000"`` → (1000, 5000); an empty text → ()."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(
            f"--lr-milestones '{text}' must look like 1000,5000"
        ) from None


# lclr run ------------------------------------------------------------------------


def _rank_note() -> str:
    """' (rank R)' in the processes of a torchrun job other than rank 0."""
    rank = os.environ.get("RANK", "0")
    if rank == "0" or os.environ.get("WORLD_SIZE", "1") == "1":
        return ""
    return f" (rank {rank})"


@cli.command()
@click.option(
    "--generator", default="stylegan2", show_default=True, help="Generator plugin."
)
@click.option(
    "--weights", type=click.Path(), help="Checkpoint; default: embedded weights."
)
@click.option(
    "--layer", help="Target layer f (see `lclr layers`); default: recommended."
)
@click.option(
    "--edit-layers", help="Per-layer codes (W+) to edit, e.g. 0-3; default all."
)
@click.option("--class", "class_label", help="Class of a class-conditional generator.")
@click.option(
    "--direction", default="nonlinear", show_default=True, help="Direction model."
)
@click.option("--objective", default="latentclr", show_default=True, help="Objective.")
@click.option("-k", "k", type=int, default=8, show_default=True, help="K, directions.")
@click.option(
    "--alpha", type=float, default=3.0, show_default=True, help="α, edit norm."
)
@click.option("--alpha-range", nargs=2, type=float, help="Sample α from MIN MAX.")
@click.option("--temperature", type=float, help="τ of the LatentCLR objective [0.5].")
@click.option("--batch-size", type=int, default=16, show_default=True, help="N.")
@click.option("--iterations", type=int, default=1000, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-3, show_default=True)
@click.option("--lr-milestones", default="1000,5000", show_default=True,
              help="Steps at which the lr is multiplied by --lr-gamma.")  # fmt: skip
@click.option("--lr-gamma", type=float, default=0.2, show_default=True)
@click.option("--grad-clip", type=float, help="Clip the gradient norm.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--world-size",
    type=int,
    help="G: global batch of G·N from G seed streams; default: torchrun's processes.",
)
@click.option("--chunk-size", type=int, help="Micro-batch of the K·N forward.")
@click.option(
    "--max-memory", type=float, help="GiB a step may use; default: most of the free."
)
@click.option(
    "--autocast/--no-autocast", default=None, help="bf16 generator [on for CUDA]."
)
@click.option("--channels-last", is_flag=True, help="Channels-last convolutions.")
@click.option("--compile", is_flag=True, help="torch.compile the generator.")
@click.option("--checkpoint-every", type=int, default=200, show_default=True)
@click.option("--out", type=click.Path(), help="Run folder; default runs/NAME-TIME.")
@click.option("--resume", type=click.Path(), help="Continue the run in this folder.")
@click.option(
    "--config", "config_file", type=click.Path(), help="A JSON or TOML config."
)
@click.option(
    "-G", "--generator-option", multiple=True, help="KEY=VALUE for the generator."
)
@click.option(
    "-D", "--direction-option", multiple=True, help="KEY=VALUE for directions."
)
@click.option(
    "-O", "--objective-option", multiple=True, help="KEY=VALUE for the objective."
)
@click.option("--no-render", is_flag=True, help="Skip the grids at the end.")
@click.pass_context
def run(ctx, **opts):
    """Train LatentCLR directions on a generator.

    Started as `torchrun --nproc-per-node G -m lclr run ...`, the G
    processes train one run together, data-parallel.
    """
    from lclr import distributed
    from lclr.training import train

    given = {
        name
        for name in opts
        if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
    }
    if opts["resume"]:
        extra = sorted(given - RESUMABLE)
        if extra:
            flags = {p.name: p.opts[0] for p in ctx.command.params}
            names = ", ".join(flags[n] for n in extra)
            raise ConfigError(f"--resume continues a run as configured; drop {names}")
        folder = Path(opts["resume"])
        from lclr.runfolder import read_config

        config = read_config(folder)
        changes = {n: opts[n] for n in ("iterations", *HOW) if n in given}
        if "weights" in given:
            changes["weights"] = os.path.abspath(opts["weights"])
        config = config.evolve(**changes)
    else:
        config = _config_from_options(opts, given)
        _check_class_option(config, opts["class_label"])
        folder = Path(opts["out"]) if opts["out"] else None
    with distributed.session(config.device) as world:
        quiet = ctx.obj["quiet"] or not world.writer
        if not world.writer:
            log.setLevel(max(log.level, logging.ERROR))
        if folder is None:
            from lclr.runfolder import claim_new_folder

            claimed = claim_new_folder(_default_out(config)) if world.writer else None
            folder = Path(distributed.broadcast_text(claimed and str(claimed)))
        try:
            with _progress(config, quiet):
                result = train(config, folder, resume=bool(opts["resume"]))
        except (LclrError, KeyboardInterrupt):
            claimed = not opts["out"] and not opts["resume"] and world.writer
            if claimed and not any(folder.iterdir()):
                folder.rmdir()  # the folder claimed for this run holds nothing
            raise
    if not world.writer:
        return  # rank 0 reports and renders
    click.echo(f"run folder:  {folder}")
    click.echo(f"directions:  {folder / 'directions.safetensors'}")
    if not opts["no_render"]:
        from lclr.api import load_run
        from lclr.render import render_run

        files = render_run(load_run(folder), folder / "images")
        click.echo(f"grid:        {files[0]}")
        click.echo(f"animations:  {folder / 'images'}/direction_*.gif")
    log.info("finished at step %d", result.step)


def _config_from_options(opts: dict, given: set[str]):
    from lclr.config import RunConfig

    base = (
        RunConfig.from_file(opts["config_file"]) if opts["config_file"] else RunConfig()
    )
    fields = {
        "generator", "weights", "layer", "direction", "objective", "k", "alpha",
        "batch_size", "iterations", "lr", "weight_decay", "lr_gamma", "grad_clip",
        "seed", "device", "checkpoint_every", "world_size", "chunk_size",
        "max_memory", "autocast", "channels_last", "compile",
    }  # fmt: skip
    changes = {name: opts[name] for name in fields & given}
    if changes.get("weights"):
        # the run records it: absolute, so the run loads from any folder
        changes["weights"] = os.path.abspath(changes["weights"])
    if "alpha_range" in given:
        changes["alpha_range"] = opts["alpha_range"]
    if "lr_milestones" in given:
        changes["lr_milestones"] = parse_steps(opts["lr_milestones"])
    if "edit_layers" in given:
        changes["edit_layers"] = parse_layers(opts["edit_layers"])
    gen = {
        **base.generator_options,
        **parse_options(opts["generator_option"], "generator"),
    }
    if opts["class_label"] is not None:
        gen["class_label"] = opts["class_label"]
    direction = {
        **base.direction_options,
        **parse_options(opts["direction_option"], "direction"),
    }
    objective = {
        **base.objective_options,
        **parse_options(opts["objective_option"], "objective"),
    }
    if opts["temperature"] is not None:
        if objective.get("temperature", opts["temperature"]) != opts["temperature"]:
            raise ConfigError("--temperature and -O temperature disagree; give one")
        objective["temperature"] = opts["temperature"]
    changes.update(
        generator_options=gen, direction_options=direction, objective_options=objective
    )
    return base.evolve(**changes)


def _check_class_option(config, class_label) -> None:
    if class_label is None:
        return
    import attrs

    from lclr.registry import get_registry

    comp = get_registry().get("generator", config.generator)
    fields = {f.name for f in attrs.fields(comp.options)} if comp.options else set()
    if "class_label" not in fields:
        raise ConfigError(
            f"generator '{config.generator}' is not class-conditional; drop --class"
        )


def _default_out(config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.generator}-{config.direction}-{stamp}"


class _ProgressBar:
    """A lifecycle-hook plugin that draws the progress bar."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None

    @hookimpl
    def lclr_run_start(self, run):
        from tqdm import tqdm

        self.bar = tqdm(
            total=run.config.iterations, initial=run.step, desc="lclr", unit="step",
            file=sys.stderr, dynamic_ncols=True,
        )  # fmt: skip

    @hookimpl
    def lclr_step_end(self, run, step, metrics):
        self.bar.update(1)
        if step % 10 == 0 or step == run.config.iterations:
            self.bar.set_postfix(
                loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc']:.2f}"
            )

    @hookimpl
    def lclr_run_end(self, run, interrupted):
        self.bar.close()


class _progress:
    def __init__(self, config, quiet):
        self.plugin = None if quiet else _ProgressBar(config.iterations)

    def __enter__(self):
        if self.plugin is not None:
            from lclr.registry import get_registry

            get_registry().pm.register(self.plugin, name="lclr-progress")
        return self

    def __exit__(self, *exc):
        if self.plugin is not None:
            from lclr.registry import get_registry

            get_registry().pm.unregister(name="lclr-progress")
            if self.plugin.bar is not None:
                self.plugin.bar.close()


# lclr plugins / layers ---------------------------------------------------------


@cli.command()
def plugins():
    """List plugin distributions, what they provide, and any that failed."""
    from lclr.registry import KINDS, get_registry

    registry = get_registry()
    if registry.unmatched:
        names = ", ".join(registry.unmatched)
        click.echo(f"LCLR_PLUGINS names no installed plugin: {names}", err=True)
    if not registry.plugins:
        click.echo("no plugins loaded")
    for info in registry.plugins:
        click.echo(f"{info.distribution} {info.version} (plugin '{info.name}')")
        if info.error:
            click.echo(f"  FAILED: {info.error}")
        for kind, table in registry.components.items():
            for comp in table.values():
                if comp.plugin == info.name:
                    label = KINDS[kind][1]
                    click.echo(f"  {label:<16} {comp.name:<12} {comp.summary}")
    for message in registry.conflicts.values():
        click.echo(f"CONFLICT: {message}")


@cli.command()
@click.option("--generator", default="stylegan2", show_default=True)
@click.option("--weights", type=click.Path())
@click.option("-G", "--generator-option", multiple=True, help="KEY=VALUE.")
def layers(generator, weights, generator_option):
    """List a generator's targetable layers with their output shapes."""
    from lclr.registry import create_generator

    options = parse_options(generator_option, "generator")
    g = create_generator(generator, weights=weights, **options)
    default = g.default_layer()
    click.echo(f"{generator}: {g.num_codes} per-layer codes of size {g.latent_dim}")
    for name in g.layers():
        shape = "x".join(str(s) for s in g.layer_shape(name))
        mark = "  (default)" if name == default else ""
        click.echo(f"  {name:<12} {shape}{mark}")


# lclr render / eval ----------------------------------------------------------------


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--samples", type=int, default=3, show_default=True)
@click.option(
    "--steps", type=int, default=7, show_default=True, help="Columns per sample."
)
@click.option("--alpha", type=float, help="Sweep ±alpha; default the run's α.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), help="Default RUN/images.")
@click.option("--no-gif", is_flag=True)
def render(run_dir, samples, steps, alpha, seed, out, no_gif):
    """Render a run's directions: a PNG grid and a GIF per direction."""
    from lclr.api import load_run
    from lclr.render import render_run

    if samples < 1 or steps < 2:
        raise ConfigError("--samples must be at least 1 and --steps at least 2")
    if alpha is not None and not (alpha > 0 and math.isfinite(alpha)):
        raise ConfigError(f"--alpha must be greater than 0 and finite; got {alpha}")
    run_ = load_run(run_dir)
    _note_incomplete(run_)
    out = Path(out) if out else Path(run_dir) / "images"
    files = render_run(
        run_, out, samples=samples, steps=steps, alpha=alpha, seed=seed, gif=not no_gif
    )
    click.echo(f"grid:        {files[0]}")
    if len(files) > 1:
        click.echo(f"animations:  {out}/direction_*.gif")


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path())
@click.option("--evaluator", default="shapes", show_default=True)
@click.option("-E", "--evaluator-option", multiple=True, help="KEY=VALUE.")
@click.option("--out", type=click.Path(), help="Default RUN/eval.")
def eval_(run_dir, evaluator, evaluator_option, out):
    """Score a run's directions with an evaluator; writes eval.json."""
    from lclr.api import load_run
    from lclr.registry import create_evaluator

    ev = create_evaluator(evaluator, **parse_options(evaluator_option, "evaluator"))
    run_ = load_run(run_dir)
    _note_incomplete(run_)
    out = Path(out) if out else Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    summary = ev.evaluate(run_, out)
    click.echo(f"score:       {summary.get('score', float('nan')):.3f}")
    for line in summary.get("lines", []):
        click.echo(line)
    click.echo(f"results:     {out}")


def _note_incomplete(run) -> None:
    if getattr(run.directions, "closed_form", False):
        return  # fitted, not trained: step 0 is complete
    if run.step < run.config.iterations:
        click.echo(
            f"note: this run stopped at step {run.step} of {run.config.iterations}; "
            f"`lclr run --resume {run.folder}` finishes it",
            err=True,
        )


def main():
    cli(prog_name="lclr")
