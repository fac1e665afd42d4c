"""The LatentCLR training loop, readable top to bottom.

One step: sample codes, take base features without gradient, edit with all K
directions in one call, run one batched truncated forward on the K·N edited
codes, and let the objective contrast the feature changes. The loop never
prints: it logs at debug level and calls the lifecycle hooks; the CLI owns
the progress bar.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import attrs
import torch

from lclr import distributed, runfolder, speed
from lclr.config import RunConfig
from lclr.errors import (
    CheckpointError,
    ConfigError,
    LclrError,
    ProcessGroupError,
)
from lclr.interfaces import Generator, layer_index
from lclr.registry import get_registry, options_dict

log = logging.getLogger(__name__)


class RunInterrupted(LclrError):
    """Ctrl-C stopped a run; the message says what was kept and how to go on."""

    exit_code = 130


@attrs.define
class RunState:
    """A run being trained; what the lifecycle hooks receive."""

    config: RunConfig
    folder: Path
    generator: Any
    directions: Any
    objective: Any
    layer: str
    optimizer: torch.optim.Optimizer
    scheduler: Any
    rng: torch.Generator
    step: int = 0
    streams: list[torch.Generator] = attrs.field(factory=list)
    """This process's latent seed streams (see lclr.distributed); [rng] if
    not given."""
    saved_step: int | None = None
    """The step of the last checkpoint written or resumed from."""

    def __attrs_post_init__(self):
        if not self.streams:
            self.streams = [self.rng]


# Building the pieces ------------------------------------------------------------


def build_components(config: RunConfig, device: str | None = None):
    """Generator, direction model, objective and target layer of a config."""
    device = _device(device or config.device)
    registry = get_registry()
    generator = registry.build(
        "generator", config.generator, config.generator_options, weights=config.weights
    )
    generator = generator.to(device).eval().requires_grad_(False)
    generator = speed.prepare_generator(generator, config)
    layer = config.layer or generator.default_layer()
    layer_index(generator.layers(), layer, config.generator)
    check_edit_layers(config, generator)

    # Directions start from the run's seed, without touching global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        directions = registry.build(
            "direction",
            config.direction,
            config.direction_options,
            k=config.k,
            latent_dim=generator.latent_dim,
        )
        objective = registry.build(
            "objective", config.objective, config.objective_options
        )
        # A projector head is built here, from the same seeded RNG.
        feature_dim = math.prod(generator.layer_shape(layer))
        objective.setup(feature_dim, device)
    directions = directions.to(device)
    return generator, directions, objective, layer


def check_edit_layers(config: RunConfig, generator) -> None:
    if config.edit_layers is None:
        return
    bad = [i for i in config.edit_layers if i >= generator.num_codes]
    if bad:
        raise ConfigError(
            f"--edit-layers {bad[0]} is out of range; {config.generator} takes "
            f"{generator.num_codes} per-layer codes, 0-{generator.num_codes - 1}"
        )


def compose_codes(base, edited, edit_layers, num_codes):
    """Codes for the generator with the edit applied to chosen layers only.

    ``base`` (N, D) and ``edited`` (M, N, D) → (M·N, D), or (M·N, L, D) when
    ``edit_layers`` names the per-layer codes that get the edit.
    """
    m, n, d = edited.shape
    if edit_layers is None:
        return edited.reshape(m * n, d)
    mask = torch.zeros(num_codes, 1, dtype=torch.bool, device=base.device)
    mask[list(edit_layers)] = True
    plus = torch.where(mask, edited[:, :, None, :], base[None, :, None, :])
    return plus.reshape(m * n, num_codes, d)  # (M·N, L, D)


def make_optimizer(config: RunConfig, directions, objective):
    params = list(directions.parameters()) + list(objective.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(config.lr_milestones), gamma=config.lr_gamma
    )
    return optimizer, scheduler


# The loop ---------------------------------------------------------------------


def train(config: RunConfig, folder: str | Path, *, resume: bool = False) -> RunState:
    """Train (or resume) a run in ``folder`` up to ``config.iterations`` steps.

    Under torchrun every process calls this; they train one run together
    (see :mod:`lclr.distributed`) and only rank 0 writes ``folder``.
    """
    with distributed.session(config.device):
        return _train(config, Path(folder), resume=resume)


def _train(config: RunConfig, folder: Path, *, resume: bool) -> RunState:
    world = distributed.current()
    config = distributed.fit_world_size(config, world, resume=resume)
    if not resume and world.writer:
        runfolder.check_new_folder(folder)
    device = distributed.local_device(config.device, world)
    generator, directions, objective, layer = build_components(config, device)
    distributed.note_batch_norm(world, directions, objective)
    optimizer, scheduler = make_optimizer(config, directions, objective)
    streams = [
        torch.Generator().manual_seed(distributed.stream_seed(config.seed, i))
        for i in distributed.local_streams(config.world_size, world)
    ]
    run = RunState(config, folder, generator, directions, objective, layer,
                   optimizer, scheduler, streams[0], streams=streams)  # fmt: skip
    if getattr(directions, "closed_form", False):
        return _fit(run, resume=resume)
    created = False
    if resume:
        _restore(run, runfolder.load_state(folder / runfolder.STATE))
        run.saved_step = run.step
        _check_same_weights(folder, generator, config.weights)
        if config.iterations <= run.step:
            raise ConfigError(
                f"{folder} is already at step {run.step}; pass --iterations above "
                f"{run.step} to continue it"
            )
        if world.writer:
            runfolder.write_config(folder, config)
            runfolder.truncate_metrics(folder, run.step)
    elif world.writer:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        runfolder.write_config(folder, config)

    try:
        interrupted = _loop(run)
    except ProcessGroupError as exc:
        raise ProcessGroupError(
            f"{exc} after step {run.step}; its last checkpoint is kept; "
            f"resume with: {distributed.resume_command(folder)}"
        ) from None
    except LclrError:
        # Keep what was learnt: the parameters are those of the last full step.
        # Several processes keep their last checkpoint: a peer may be gone.
        if run.step > 0:
            if world.size == 1:
                save_checkpoint(run)
        elif not resume and world.writer:
            _remove_new_run(folder, created)
        raise
    except KeyboardInterrupt:
        # a second Ctrl-C drops the step in flight; the last checkpoint stays
        if run.saved_step is None:
            if not resume and world.writer:
                _remove_new_run(folder, created)
            raise RunInterrupted(
                f"aborted at step {run.step}, before the first checkpoint; "
                "nothing was kept, so run the same command again"
            ) from None
        raise RunInterrupted(
            f"aborted at step {run.step}; the checkpoint of step {run.saved_step} "
            f"is kept; resume with: {distributed.resume_command(folder)}"
        ) from None
    if interrupted:
        raise RunInterrupted(
            f"interrupted at step {run.step}; checkpoint written; "
            f"resume with: {distributed.resume_command(folder)}"
        )
    return run


def _fit(run: RunState, *, resume: bool) -> RunState:
    """A closed-form direction model: fitted once, saved at step 0."""
    config, folder = run.config, run.folder
    if resume:
        raise ConfigError(
            f"{folder} holds {config.direction} directions, found in closed "
            "form: there is nothing to resume; start a new run to change them"
        )
    log.info(
        "fitting %s directions in closed form; the objective and --iterations "
        "are not used",
        config.direction,
    )
    stream = torch.Generator().manual_seed(config.seed)
    device = next(run.directions.parameters()).device

    def sample(n: int) -> torch.Tensor:
        return run.generator.sample_latent(n, generator=stream).to(device)

    run.directions.fit(
        run.generator, layer=run.layer, sample=sample, edit_layers=config.edit_layers
    )
    if distributed.current().writer:
        # no training state: there is nothing to resume
        folder.mkdir(parents=True, exist_ok=True)
        runfolder.write_config(folder, config)
        meta = export_meta(run)
        runfolder.export_directions(folder, run.directions.export(), meta)
    return run


def _loop(run: RunState) -> bool:
    """Steps until the total or Ctrl-C; True when interrupted."""
    config, folder = run.config, run.folder
    writer = distributed.current().writer
    hook = get_registry().pm.hook
    hook.lclr_run_start(run=run)
    interrupted = False
    with sigint_flag() as stop:
        while run.step < config.iterations:
            metrics = train_step(run)
            run.step += 1
            last = run.step == config.iterations
            if writer and (run.step % config.log_every == 0 or last):
                _log_metrics(folder, run.step, metrics)
            hook.lclr_step_end(run=run, step=run.step, metrics=metrics)
            if run.step % config.checkpoint_every == 0:
                save_checkpoint(run)
            if distributed.any_rank(stop.is_set()):
                interrupted = True
                break
    save_checkpoint(run)
    hook.lclr_run_end(run=run, interrupted=interrupted)
    return interrupted


def _remove_new_run(folder: Path, created: bool) -> None:
    """A new run that failed before its first step leaves nothing behind."""
    for name in (runfolder.CONFIG, runfolder.METRICS):
        (folder / name).unlink(missing_ok=True)
    if created and not any(folder.iterdir()):
        folder.rmdir()


def train_step(run: RunState) -> dict[str, float]:
    """One LatentCLR step; returns its metrics."""
    config, g = run.config, run.generator
    device = next(run.directions.parameters()).device

    # 1. Sample N codes per seed stream in the generator's working space.
    codes = _sample_codes(run).to(device)  # (n, D), n = N·streams
    n = codes.shape[0]

    # 2. Base features, without gradient.
    precision = functools.partial(speed.autocast, config, device)
    with torch.no_grad(), precision():
        base_raw = speed.features_of(g, codes, run.layer, config.chunk_size)
    base_in = speed.upcast(base_raw)
    base = run.objective.transform_features(base_in)  # (N, F)
    copies = speed.held_copies(base_in, base)

    # 3. All K edits in one call of the direction model.
    alpha = (
        _sample_alpha(config, run.streams).to(device)
        if config.alpha_range
        else config.alpha
    )
    edited = run.directions(codes, alpha)  # (K, N, D)

    # 4. One batched truncated forward on the K·N edited codes (micro-batched
    # when memory demands it), the changes contrasted, the backward pass.
    x = compose_codes(codes, edited, config.edit_layers, g.num_codes)
    chunk = speed.plan_chunks(
        config, g, run.layer, x, base_raw.shape[1], precision, copies
    )
    run.optimizer.zero_grad(set_to_none=True)

    def contrast(changes):  # (K, n, F)
        # Under torchrun the loss sees the changes of the whole global batch.
        return run.objective(distributed.gather_samples(changes))  # (K, G·N, F)

    with speed.out_of_memory_is_an_error(x, chunk):
        loss, metrics = speed.forward_backward(
            g, run.layer, x, base, run.objective, (config.k, n),
            chunk_size=chunk, precision=precision, loss_fn=contrast,
        )  # fmt: skip
    distributed.average_gradients(run.optimizer)

    # 5. Update the directions.
    if config.grad_clip:
        params = [p for group in run.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    metrics = {"loss": float(loss.detach()), **metrics}
    metrics["lr"] = run.optimizer.param_groups[0]["lr"]
    log.debug("step %d: %s", run.step + 1, metrics)
    return metrics


def _sample_codes(run: RunState) -> torch.Tensor:
    """N codes from each of this process's seed streams, in stream order."""
    n = run.config.batch_size
    parts = [run.generator.sample_latent(n, generator=s) for s in run.streams]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _sample_alpha(config: RunConfig, streams) -> torch.Tensor:
    lo, hi = config.alpha_range
    parts = [torch.rand(config.k, config.batch_size, generator=s) for s in streams]
    u = torch.cat(parts, dim=1)
    return lo + (hi - lo) * u  # (K, n)


# Checkpoints ----------------------------------------------------------------------


def save_checkpoint(run: RunState) -> None:
    """Resumable state and the exported directions, both atomically.

    Every process calls it (the random states of all streams are collected);
    only rank 0 writes.
    """
    rngs = distributed.gather_states([s.get_state() for s in run.streams])
    if not distributed.current().writer:
        run.saved_step = run.step  # rank 0 writes it
        return
    objective_state = {
        k: v.detach().cpu() for k, v in run.objective.state_dict().items()
    }
    state = {
        "step": run.step,
        "config": run.config.to_json(),
        "directions": run.directions.state_dict(),
        "objective": objective_state,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": rngs[0],
        "rngs": rngs,  # one per seed stream (RunConfig.world_size)
    }
    path = run.folder / runfolder.STATE
    runfolder.save_state(path, state)
    runfolder.export_directions(run.folder, run.directions.export(), export_meta(run))
    run.saved_step = run.step  # only once both files are written
    get_registry().pm.hook.lclr_checkpoint_written(run=run, path=path)
    log.debug("checkpoint at step %d written to %s", run.step, path)


def export_meta(run: RunState) -> dict[str, Any]:
    c = run.config
    return {
        "format": "lclr-directions/1",
        "generator": c.generator,
        "weights": c.weights,
        "generator_options": c.generator_options,
        "generator_info": run.generator.describe(),
        "layer": run.layer,
        "space": run.generator.space,
        "latent_dim": run.generator.latent_dim,
        "num_codes": run.generator.num_codes,
        "edit_layers": list(c.edit_layers) if c.edit_layers is not None else None,
        "direction": c.direction,
        "direction_options": options_dict_of(run.directions, c.direction_options),
        "k": c.k,
        "alpha": c.alpha,
        "step": run.step,
    }


def options_dict_of(model, given: dict) -> dict:
    options = getattr(model, "options", None)
    return options_dict(options) if attrs.has(type(options)) else dict(given)


def _check_same_weights(folder: Path, generator: Generator, weights) -> None:
    """Refuse to resume a run on weights other than its own. ``weights``,
    the path the run now loads, may differ from the recorded one (the file
    was moved) when its SHA-256 is the one the run recorded."""
    recorded = runfolder.read_config(folder).weights
    if not (folder / runfolder.DIRECTIONS).exists():
        if weights != recorded:
            raise CheckpointError(
                f"{folder} has no {runfolder.DIRECTIONS} yet, so the weights at "
                f"{weights} cannot be checked against its own; put its file back "
                f"at {recorded} and resume without --weights, or train a new run"
            )
        return
    meta = runfolder.read_directions(folder)[1]
    back = f"put the run's own file back at {recorded}"
    if weights != recorded:
        then = (meta.get("generator_info") or {}).get("sha256")
        if not then:
            raise CheckpointError(
                f"{folder} recorded no digest of its generator's weights, so the "
                f"weights at {weights} cannot be checked against them; {back} "
                "and resume without --weights, or train a new run"
            )
        if not generator.describe().get("sha256"):
            raise CheckpointError(
                f"the {meta.get('generator', 'generator')} plugin gives no digest "
                f"of the weights at {weights}, so they cannot be checked against "
                f"the run's; {back} and resume without --weights"
            )
    changed = runfolder.weights_changed({**meta, "weights": weights}, generator)
    if not changed:
        return
    if recorded is None:
        remedy = "give --weights a copy of the weights it was trained on"
    else:
        remedy = f"{back} (or give its new place with --weights)"
    raise CheckpointError(
        f"{changed}, so {folder} cannot go on with them; {remedy}, or train a new run"
    )


def _restore(run: RunState, state: dict) -> None:
    try:
        run.directions.load_state_dict(state["directions"])
        run.objective.load_state_dict(state["objective"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        rngs = state.get("rngs", [state["rng"]])
        mine = distributed.local_streams(run.config.world_size, distributed.current())
        if len(rngs) != run.config.world_size:
            raise ValueError(
                f"{len(rngs)} random states for world_size {run.config.world_size}"
            )
        for stream, i in zip(run.streams, mine, strict=True):
            stream.set_state(rngs[i])
        run.step = int(state["step"])
    except Exception as exc:  # any mismatch between state.pt and config.json
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise CheckpointError(
            f"the state in {run.folder} does not fit its config.json ({first}); "
            "was config.json edited? Start a new run instead"
        ) from None


def _log_metrics(folder: Path, step: int, metrics: dict[str, float]) -> None:
    with open(folder / runfolder.METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **metrics}) + "\n")


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device '{name}'; use cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available")
    return device


@contextlib.contextmanager
def sigint_flag():
    """First Ctrl-C sets the flag (the loop stops at the step's end); a second
    one interrupts at once. Shared by every training loop of the project."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("stopping after this step; press Ctrl-C again to abort")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["RunState", "RunInterrupted", "train", "train_step"]
