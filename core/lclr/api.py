"""Loading a finished or interrupted run for use in your own code."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import torch

from lclr import runfolder
from lclr.config import RunConfig
from lclr.errors import CheckpointError
from lclr.training import build_components, compose_codes

log = logging.getLogger(__name__)


@attrs.define
class LoadedRun:
    """A trained run: its config, generator, direction model and metadata."""

    folder: Path
    config: RunConfig
    generator: Any
    directions: Any
    layer: str
    step: int
    meta: dict[str, Any]

    @property
    def alpha(self) -> float:
        return self.config.alpha

    def edit(
        self, codes: torch.Tensor, k: int, alpha: float | None = None
    ) -> torch.Tensor:
        """``codes`` (N, D) edited by direction ``k``, ready for ``synthesize``.

        When the run edits chosen per-layer codes only, the result is the
        (N, L, D) per-layer codes with the edit in those layers.
        """
        alpha = self.alpha if alpha is None else alpha
        edited = self.directions.edit(codes, k, alpha)  # (N, D)
        return compose_codes(
            codes, edited[None], self.config.edit_layers, self.generator.num_codes
        )

    @torch.no_grad()
    def images(
        self, codes: torch.Tensor, k: int, alpha: float | None = None
    ) -> torch.Tensor:
        """Images of ``codes`` edited by direction ``k`` (by the run's α unless
        given): (N, 3, H, W) in [0, 1]."""
        return self.generator.synthesize(self.edit(codes, k, alpha))


def load_run(path: str | Path, *, device: str | None = None) -> LoadedRun:
    """Load the run in ``path``; nothing in it can execute code."""
    folder = Path(path)
    config = runfolder.read_config(folder)
    if device is not None:
        config = config.evolve(device=device)
    generator, directions, _, layer = build_components(config)
    if (folder / runfolder.DIRECTIONS).exists():
        tensors, meta = runfolder.read_directions(folder)
        step = int(meta.get("step", 0))
        changed = runfolder.weights_changed(meta, generator)
        if changed:
            log.warning("%s; its directions may not show in these images", changed)
    else:
        state = runfolder.load_state(folder / runfolder.STATE)
        tensors, meta, step = state["directions"], {}, int(state["step"])
    try:
        directions.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"the directions in {folder} do not fit its config ({first})"
        ) from None
    directions.eval().requires_grad_(False)
    return LoadedRun(folder, config, generator, directions, layer, step, meta)
