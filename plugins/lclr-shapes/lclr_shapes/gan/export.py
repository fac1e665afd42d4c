"""Export a run's moving-average generator in its plugin's weights layout.

A StyleGAN2 run gives ``NAME.pt`` in the layout every StyleGAN2 checkpoint
the plugin loads has (``g_ema``, ``latent_avg``, ``lclr_meta``); a
BigGAN-deep run gives the folder ``NAME/`` with ``config.json`` and
``pytorch_model.bin`` (the ``pytorch-pretrained-biggan`` layout, the shape
names in ``class_names``). Beside either goes ``NAME.json`` with the
provenance: the recipe command, seed, steps, minutes, images seen and
speed. By default they go to the plugin's ``weights`` folder
(lclr-stylegan2's or lclr-biggan's), where they become the embedded
generator.

Run it with ``python -m lclr_shapes.gan.export RUN_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from lclr.errors import ConfigError, RunFolderError
from lclr_shapes import render
from lclr_shapes.gan.config import FLAGS, GanConfig, option_text
from lclr_shapes.gan.train import build_generator, load_checkpoint

logger = logging.getLogger(__name__)

RECIPE = "python -m lclr_shapes.gan.train --out RUN_DIR"
"""The command that trains a run; its options are appended."""

LATENT_AVG_SAMPLES = 10_000


def _recipe(config: GanConfig) -> str:
    """The training command with every option this run differs by."""
    default = GanConfig()
    parts = [RECIPE, f"--seed {config.seed}"]
    for field, flag in FLAGS.items():
        value = getattr(config, field)
        if field == "seed" or value == getattr(default, field):
            continue
        if field == "late":
            parts += [f"{flag} {name}={v!r}" for name, v in sorted(value.items())]
        elif isinstance(value, bool):
            parts.append(flag)  # a switch: only True differs from the default
        else:
            parts.append(f"{flag} {option_text(field, value)}")
    if config.minutes is not None:
        parts.append(f"--minutes {config.minutes!r}")  # every digit
    if config.steps is not None:
        parts.append(f"--steps {config.steps}")
    return " ".join(parts)


def _speeds(run_dir: Path, feature_seconds: float) -> dict[str, float | None]:
    """Seconds per step: the mean over the run (less the ``feature_seconds``
    of pretraining the feature network), and the median of the logged
    windows (what the run costs when nothing else shares the cores, as long
    as most windows had them to itself)."""
    path = run_dir / "metrics.jsonl"
    records = []
    if path.is_file():
        lines = path.read_text().splitlines()
        records = [json.loads(line) for line in lines if line]
    if not records:
        return {"sec_per_step": None, "median_sec_per_step": None}
    windows = sorted(r["sec_per_step"] for r in records if "sec_per_step" in r)
    median = windows[len(windows) // 2] if windows else None
    return {
        "sec_per_step": (records[-1]["minutes"] * 60 - feature_seconds)
        / records[-1]["step"],
        "median_sec_per_step": median,
    }


def _check_targets(paths: list[Path], force: bool) -> None:
    """Refuse to replace files already there, unless ``force``."""
    there = [p for p in paths if p.exists()]
    if there and not force:
        raise RunFolderError(
            f"{there[0]} exists; pass --force to replace it, or choose "
            "another --to or --name"
        )


def check_name(name: str) -> str:
    """``name`` if it is a plain file name (no folders, not hidden)."""
    if not name or name != Path(name).name or name.startswith("."):
        raise ConfigError(
            f"--name '{name}' must be a plain file name such as shapes32 "
            "(no folders, not starting with a dot)"
        )
    return name


def export(
    run_dir: str | Path,
    dest: str | Path | None = None,
    name: str = "shapes32",
    force: bool = False,
    raw: bool = False,
) -> list[Path]:
    """Write the weights and ``NAME.json`` for the run in ``run_dir``.

    The weights are ``NAME.pt`` for a StyleGAN2 run, the folder ``NAME``
    for a BigGAN-deep one. ``dest`` defaults to the plugin's weights
    folder, where the shipped generators are: files already there are
    replaced only with ``force``. The generator is G's moving average, or
    with ``raw`` G itself as the last step left it (to tell what the
    average blurs from what G draws). Returns the two paths.
    """
    check_name(name)
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir)
    config = GanConfig.from_json(state["config"])
    G = build_generator(config).eval().requires_grad_(False)
    G.load_state_dict(state["G" if raw else "G_ema"])

    steps, nimg = int(state["step"]), int(state["nimg"])
    minutes = float(state["elapsed"]) / 60
    # recorded since the feature network's pretraining was timed apart;
    # None: a run with one, checkpointed before that (its time is unknown)
    feature_seconds = state.get("feature_seconds")
    if feature_seconds is None and not config.feature_d:
        feature_seconds = 0.0
    finished = config.minutes is not None and minutes >= config.minutes
    finished = finished or (config.steps is not None and steps >= config.steps)
    provenance = {
        "recipe": _recipe(config),
        "seed": config.seed,
        "steps": steps,
        "images_seen": nimg,
        "minutes": round(minutes, 2),
        **(
            {
                "feature_network_minutes": None
                if feature_seconds is None
                else round(feature_seconds / 60, 2)
            }
            if config.feature_d
            else {}
        ),
        **_speeds(run_dir, feature_seconds or 0.0),
        "finished": finished,
        **({"generator": "raw: G as the last step left it, no moving average"}
           if raw else {}),
    }  # fmt: skip
    median = provenance["median_sec_per_step"]
    if median is not None:
        provenance["minutes_at_median_speed"] = round(
            (steps * median + (feature_seconds or 0.0)) / 60, 1
        )
    if config.arch == "biggan":
        return _export_biggan(G, config, provenance, dest, name, force)
    from lclr_stylegan2.loading import EMBEDDED_WEIGHTS, save_checkpoint

    dest = Path(dest) if dest is not None else EMBEDDED_WEIGHTS.parent
    _check_targets([dest / f"{name}.pt", dest / f"{name}.json"], force)
    # latent_avg over classes drawn uniformly (the truncation centre)
    gen = torch.Generator().manual_seed(0)
    latent_avg = G.mean_latent(LATENT_AVG_SAMPLES, None, gen)  # (D,)
    meta = {
        "size": config.size,
        "style_dim": config.style_dim,
        "n_mlp": config.n_mlp,
        "channels": {str(r): c for r, c in G.channels.items()},
        "c_dim": G.c_dim,
        "class_names": list(render.SHAPES) if G.c_dim else None,
        "provenance": provenance,
    }
    pt_path = save_checkpoint(dest / f"{name}.pt", G, latent_avg, meta)
    pt_path.chmod(0o644)  # package data, readable by every user

    info = {
        "name": name,
        "description": (
            "class-conditional StyleGAN2 trained adversarially on the "
            "lclr-shapes world; one class per shape"
        ),
        **provenance,
        "class_names": meta["class_names"],
        "config": json.loads(config.to_json()),
        "file_bytes": pt_path.stat().st_size,
        "sha256": hashlib.sha256(pt_path.read_bytes()).hexdigest(),
        "quality": None,
    }
    json_path = _write_info(dest / f"{name}.json", info)
    logger.info("exported step %d to %s", steps, pt_path)
    return [pt_path, json_path]


def _export_biggan(
    G, config: GanConfig, provenance: dict, dest, name: str, force: bool
):
    """The BigGAN-deep half of :func:`export`: the folder ``NAME``."""
    from lclr_biggan.loading import WEIGHTS_NAME
    from lclr_shapes.gan import biggan

    dest = Path(dest) if dest is not None else biggan.default_destination()
    _check_targets([dest / name, dest / f"{name}.json"], force)
    folder = biggan.export_weights(G, dest / name)
    weights = folder / WEIGHTS_NAME
    for path in folder.iterdir():
        path.chmod(0o644)  # package data, readable by every user
    info = {
        "name": name,
        "description": (
            "class-conditional BigGAN-deep trained adversarially on the "
            "lclr-shapes world; one class per shape"
        ),
        **provenance,
        "class_names": list(render.SHAPES),
        "config": json.loads(config.to_json()),
        "file_bytes": weights.stat().st_size,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "batch_norm_statistics": (
            "measured after training: for each stored psi, the EMA "
            "generator's statistics on one batch of truncated-normal codes "
            "times psi, every class equally often"
        ),
        "quality": None,
    }
    json_path = _write_info(dest / f"{name}.json", info)
    logger.info("exported step %d to %s", provenance["steps"], folder)
    return [folder, json_path]


def record_quality(info_path: str | Path, weights: str | Path, arch: str) -> dict:
    """Measure the exported generator with ``lclr shapes quality``'s bar
    (n=1000, seed 0) and record the figures in its provenance file."""
    from lclr_shapes.quality import provenance_summary, quality_of_source

    info_path = Path(info_path)
    report = quality_of_source(arch, weights=str(weights), n=1000, seed=0)
    info = json.loads(info_path.read_text())
    info["quality"] = provenance_summary(report)
    _write_info(info_path, info)
    return info["quality"]


def _write_info(path: Path, info: dict) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(path)
    return path


if __name__ == "__main__":
    from lclr_shapes.gan.cli import export_gan, main

    main(export_gan, "python -m lclr_shapes.gan.export")
