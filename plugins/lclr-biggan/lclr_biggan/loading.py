"""Read BigGAN-deep weights in the ``pytorch-pretrained-biggan`` layout.

A weights folder holds ``config.json`` (the architecture) and
``pytorch_model.bin`` (a state dict). Spectral-normalised weights are stored
as ``weight_orig`` with the power-iteration vectors ``weight_u`` and
``weight_v``; they are folded here, once, into the weight the network uses in
eval mode: ``weight_orig / (u . weight_orig v)``. The file is read with
``weights_only=True``, so it cannot run code, and its keys and shapes must
match the config exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from lclr.errors import CheckpointError

from .model import BigGAN, BigGANConfig, check_config

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "pytorch_model.bin"
SN_SUFFIXES = ("weight_orig", "weight_u", "weight_v")
LAYOUT = f"a folder with {CONFIG_NAME} and {WEIGHTS_NAME} (pytorch-pretrained-biggan)"
#: The embedded default, trained on the shapes world (when it is installed).
EMBEDDED_WEIGHTS = Path(__file__).parent / "weights" / "shapes32"


def weights_folder(path: str | os.PathLike) -> Path:
    """The folder for ``path`` (either of its two files names it too)."""
    folder = Path(path)
    if folder.is_file() and folder.name in (CONFIG_NAME, WEIGHTS_NAME):
        folder = folder.parent
    if not folder.is_dir():
        raise CheckpointError(f"BigGAN weights {str(path)!r} not found; pass {LAYOUT}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise CheckpointError(
                f"BigGAN weights folder {str(folder)!r} has no {name}; "
                f"it must hold both {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
    return folder


def read_config(path: str | os.PathLike) -> BigGANConfig:
    """The :class:`BigGANConfig` in a ``config.json``; absent fields default."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object of BigGAN settings")
    fields = {f.name for f in attrs.fields(BigGANConfig)}
    ignored = sorted(set(raw) - fields)
    if ignored:
        log.debug("ignoring unknown config fields: %s", ", ".join(ignored))
    values = {k: v for k, v in raw.items() if k in fields}
    try:
        if "layers" in values:
            values["layers"] = tuple(
                (bool(up), int(c_in), int(c_out))
                for up, c_in, c_out in values["layers"]
            )
        for name in fields - {"layers", "eps"}:
            if name in values:
                values[name] = int(values[name])
        if "eps" in values:
            values["eps"] = float(values["eps"])
        config = BigGANConfig(**values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a BigGAN config: {exc}") from None
    problems = check_config(config)
    if problems:
        raise CheckpointError(f"{path} is not a BigGAN-deep config: {problems[0]}")
    return config


def read_class_names(path: str | os.PathLike, num_classes: int) -> tuple[str, ...]:
    """The ``class_names`` a ``config.json`` records, or ``()`` if none.

    Weights trained on other data than ImageNet name their classes there,
    one per class, in index order.
    """
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    names = raw.get("class_names")
    if names is None:
        return ()
    if (
        not isinstance(names, list)
        or len(names) != num_classes
        or not all(isinstance(n, str) and n.strip() for n in names)
        or len(set(names)) != len(names)
    ):
        raise CheckpointError(
            f"{path}: class_names must list {num_classes} distinct names, one per class"
        )
    return tuple(names)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors in ``pytorch_model.bin``, as float32; no code runs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types; all mean "not ours"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path} is not a readable PyTorch state dict "
            f"({type(exc).__name__}: {first[:120]})"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} must hold a state dict of named tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def spectral_prefixes(model: BigGAN) -> list[str]:
    """Modules stored spectral-normalised: every conv and linear but the
    class embedding."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and name != "embeddings"
    ]


def stored_shapes(model: BigGAN) -> dict[str, tuple[int, ...]]:
    """Every key the weights file must have, with its shape, in model order."""
    spectral = {f"{prefix}.weight" for prefix in spectral_prefixes(model)}
    shapes = {}
    for key, value in model.state_dict().items():
        shape = tuple(value.shape)
        if key not in spectral:
            shapes[key] = shape
            continue
        stem = key.removesuffix("weight")
        shapes[stem + "weight_orig"] = shape
        shapes[stem + "weight_u"] = shape[:1]
        shapes[stem + "weight_v"] = (math.prod(shape[1:]),)
    return shapes


def fold_spectral_norm(
    state: Mapping[str, torch.Tensor], prefixes: list[str]
) -> dict[str, torch.Tensor]:
    """``state`` with each ``weight_orig/_u/_v`` triple replaced by
    ``weight``, divided by sigma = u . (W v) as in eval mode."""
    folded = dict(state)
    for prefix in prefixes:
        w, u, v = (folded.pop(f"{prefix}.{s}") for s in SN_SUFFIXES)
        sigma = torch.dot(u, torch.mv(w.reshape(w.shape[0], -1), v))
        folded[f"{prefix}.weight"] = w / sigma
    return folded


def _few(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


def check_state_dict(
    state: Mapping[str, torch.Tensor], model: BigGAN, where: str
) -> None:
    """Strict check: the same keys as the config's network, the same shapes."""
    expected = stored_shapes(model)
    fix = f"use the {CONFIG_NAME} saved with these weights"
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        parts = [f"missing {_few(missing)}"] if missing else []
        parts += [f"unexpected {_few(unexpected)}"] if unexpected else []
        raise CheckpointError(
            f"{WEIGHTS_NAME} in {where} does not match its {CONFIG_NAME} "
            f"({'; '.join(parts)}); {fix}"
        )
    for key, shape in expected.items():
        got = tuple(state[key].shape)
        if got != shape:
            raise CheckpointError(
                f"{WEIGHTS_NAME} in {where} does not match its {CONFIG_NAME}: "
                f"{key} is {'x'.join(map(str, got))} in the weights but "
                f"{'x'.join(map(str, shape))} by the config; {fix}"
            )


@attrs.frozen
class Loaded:
    """A network read from a weights folder, and facts for run metadata."""

    model: BigGAN
    config: BigGANConfig
    info: dict[str, Any]
    class_names: tuple[str, ...] = ()


def load_biggan(path: str | os.PathLike) -> Loaded:
    """The network in the weights folder ``path``, frozen, in eval mode."""
    folder = weights_folder(path)
    config = read_config(folder / CONFIG_NAME)
    names = read_class_names(folder / CONFIG_NAME, config.num_classes)
    state = read_state_dict(folder / WEIGHTS_NAME)
    model = BigGAN(config)
    check_state_dict(state, model, str(folder))
    model.load_state_dict(fold_spectral_norm(state, spectral_prefixes(model)))
    model.requires_grad_(False).eval()
    info = {"weights": str(folder), "config": attrs.asdict(config)}
    if names:
        info["class_names"] = list(names)
    return Loaded(model, config, info, names)
