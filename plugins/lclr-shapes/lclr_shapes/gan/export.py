"""Export a run's moving-average generator as lclr-stylegan2 weights.

Writes ``NAME.pt`` in the layout every StyleGAN2 checkpoint the plugin
loads has (``g_ema``, ``latent_avg``, ``lclr_meta``) and ``NAME.json``
with the provenance: the recipe command, seed, steps, minutes, images
seen and speed. By default both go to lclr-stylegan2's ``weights``
folder, where they become the embedded generator.

Run it with ``python -m lclr_shapes.gan.export RUN_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from lclr_shapes import render
from lclr_shapes.gan.config import GanConfig
from lclr_shapes.gan.train import build_generator, load_checkpoint
from lclr_stylegan2.loading import EMBEDDED_WEIGHTS, save_checkpoint

logger = logging.getLogger(__name__)

RECIPE = "python -m lclr_shapes.gan.train --out RUN_DIR"
"""The command that trains a run; its options are appended."""

LATENT_AVG_SAMPLES = 10_000


def _recipe(config: GanConfig) -> str:
    """The training command with the options this run differs by."""
    parts = [RECIPE, f"--seed {config.seed}"]
    if config.minutes is not None:
        parts.append(f"--minutes {config.minutes:g}")
    if config.steps is not None:
        parts.append(f"--steps {config.steps}")
    return " ".join(parts)


def _mean_speed(run_dir: Path) -> float | None:
    """Mean seconds per step over the logged windows, or ``None``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    if not records:
        return None
    return records[-1]["minutes"] * 60 / records[-1]["step"]


def export(
    run_dir: str | Path, dest: str | Path | None = None, name: str = "shapes32"
) -> list[Path]:
    """Write ``NAME.pt`` and ``NAME.json`` for the run in ``run_dir``.

    ``dest`` defaults to the folder of lclr-stylegan2's embedded weights.
    Returns the two paths.
    """
    run_dir = Path(run_dir)
    dest = Path(dest) if dest is not None else EMBEDDED_WEIGHTS.parent
    state = load_checkpoint(run_dir)
    config = GanConfig.from_json(state["config"])
    G = build_generator(config).eval().requires_grad_(False)
    G.load_state_dict(state["G_ema"])

    # latent_avg over classes drawn uniformly (the truncation centre)
    gen = torch.Generator().manual_seed(0)
    latent_avg = G.mean_latent(LATENT_AVG_SAMPLES, None, gen)  # (D,)

    steps, nimg = int(state["step"]), int(state["nimg"])
    minutes = float(state["elapsed"]) / 60
    finished = config.minutes is not None and minutes >= config.minutes
    finished = finished or (config.steps is not None and steps >= config.steps)
    provenance = {
        "recipe": _recipe(config),
        "seed": config.seed,
        "steps": steps,
        "images_seen": nimg,
        "minutes": round(minutes, 2),
        "sec_per_step": _mean_speed(run_dir),
        "finished": finished,
    }
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

    digest = hashlib.sha256(pt_path.read_bytes()).hexdigest()
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
        "sha256": digest,
        "quality": None,
    }
    json_path = dest / f"{name}.json"
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(json_path)
    logger.info("exported step %d to %s", steps, pt_path)
    return [pt_path, json_path]


if __name__ == "__main__":
    from lclr_shapes.gan.cli import export_gan, main

    main(export_gan, "python -m lclr_shapes.gan.export")
