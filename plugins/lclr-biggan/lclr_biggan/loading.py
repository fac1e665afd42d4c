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
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from lclr.errors import CheckpointError
from lclr.interfaces import weights_sha256

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
    if folder.is_file():
        raise CheckpointError(
            f"BigGAN weights {str(path)!r} is a file; pass {LAYOUT}, "
            "the files renamed to those two names if need be"
        )
    if not folder.is_dir():
        raise CheckpointError(f"BigGAN weights {str(path)!r} not found; pass {LAYOUT}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise CheckpointError(
                f"BigGAN weights folder {str(folder)!r} has no {name}; "
                f"it must hold both {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
    return folder


def _whole(name: str, value: Any) -> int:
    """``value`` as an int: a JSON integer (or a float with no fraction)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return value


def _layer(i: int, entry: Any) -> tuple[bool, int, int]:
    """One ``[up_sample, in_mult, out_mult]`` entry of ``layers``."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 3:
        raise ValueError(f"layers[{i}] must be [up_sample, in_mult, out_mult]")
    up, c_in, c_out = entry
    if up not in (True, False) or isinstance(up, float):  # true/false, or 1/0
        raise ValueError(f"layers[{i}][0] (up_sample) must be true or false")
    return bool(up), _whole(f"layers[{i}][1]", c_in), _whole(f"layers[{i}][2]", c_out)


def read_config(path: str | os.PathLike) -> BigGANConfig:
    """The :class:`BigGANConfig` in a ``config.json``; absent fields default.

    Values must have their JSON types (whole numbers, ``true``/``false``);
    a string or a fraction where a whole number belongs is refused.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"cannot read {path} ({exc}); use the {CONFIG_NAME} saved with the weights"
        ) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object of BigGAN settings")
    fields = {f.name for f in attrs.fields(BigGANConfig)}
    ignored = sorted(set(raw) - fields)
    if ignored:
        log.debug("ignoring unknown config fields: %s", ", ".join(ignored))
    values = {k: v for k, v in raw.items() if k in fields}
    try:
        if "layers" in values:
            layers = values["layers"]
            if not isinstance(layers, list):
                raise ValueError("layers must be a list of [up_sample, in, out]")
            values["layers"] = tuple(_layer(i, e) for i, e in enumerate(layers))
        for name in fields - {"layers", "eps"}:
            if name in values:
                values[name] = _whole(name, values[name])
        if "eps" in values:
            eps = values["eps"]
            if isinstance(eps, bool) or not isinstance(eps, (int, float)):
                raise ValueError(f"eps must be a number, got {eps!r}")
            if not 0.0 < eps < 1.0:
                raise ValueError(f"eps must be a small positive number, got {eps!r}")
            values["eps"] = float(eps)
        config = BigGANConfig(**values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a BigGAN config: {exc}") from None
    problems = check_config(config)
    if problems:
        raise CheckpointError(
            f"{path} is not a BigGAN-deep config: {problems[0]}"
            + _assumed(_defaulted(raw))
        )
    return config


def _defaulted(raw: Mapping[str, Any]) -> list[str]:
    unused = {"class_embed_dim", "eps"}  # no weight's shape depends on them
    return sorted({f.name for f in attrs.fields(BigGANConfig)} - set(raw) - unused)


def _assumed(defaulted: list[str]) -> str:
    if not defaulted:
        return ""
    return (
        f"; {CONFIG_NAME} does not give {', '.join(defaulted)} "
        "(the 128 px model's were assumed)"
    )


def defaulted_fields(path: str | os.PathLike) -> list[str]:
    """The architecture fields a readable ``config.json`` leaves out."""
    return _defaulted(json.loads(Path(path).read_text(encoding="utf-8")))


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


#: How torch's weights-only unpickler words the cause of a refusal.
_REFUSED = ("Trying to", "Unsupported")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors in ``pytorch_model.bin``, as float32; no code runs."""
    redo = f"pass the {WEIGHTS_NAME} saved with its {CONFIG_NAME}"
    if Path(path).stat().st_size == 0:
        raise CheckpointError(
            f"{path} is empty, not a readable PyTorch state dict; {redo}"
        )
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message starts with advice to drop weights_only; keep the cause
        cause = [line for line in str(exc).splitlines() if line.strip()]
        reason = next(
            (line.strip() for line in cause if line.startswith(_REFUSED)),
            "not a tensor file",
        )
        raise CheckpointError(
            f"{path} is not a readable PyTorch state dict: the safe loader, which "
            f"never runs code from a file, refused it ({reason[:100]}); {redo}"
        ) from None
    except Exception as exc:  # truncated zips, bad headers: all mean "not ours"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path} is not a readable PyTorch state dict, damaged or of another "
            f"kind ({type(exc).__name__}: {first[:100]}); {redo}"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{path} must hold a state dict of named tensors "
            f"(torch.save(model.state_dict())); {redo}"
        )
    for key, value in state.items():
        if not value.is_floating_point():
            raise CheckpointError(
                f"{path}: {key} holds {value.dtype}, not floats; {redo}"
            )
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: {key} holds NaN or infinity; {redo}")
    return {k: v.float() for k, v in state.items()}


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
    state: Mapping[str, torch.Tensor], prefixes: list[str], where: str = "the weights"
) -> dict[str, torch.Tensor]:
    """``state`` with each ``weight_orig/_u/_v`` triple replaced by
    ``weight``, divided by sigma = u . (W v) as in eval mode."""
    folded = dict(state)
    for prefix in prefixes:
        w, u, v = (folded.pop(f"{prefix}.{s}") for s in SN_SUFFIXES)
        sigma = torch.dot(u, torch.mv(w.reshape(w.shape[0], -1), v))
        if not (torch.isfinite(sigma) and sigma != 0):
            raise CheckpointError(
                f"{WEIGHTS_NAME} in {where} is damaged: {prefix}.weight_u and "
                f"weight_v give a spectral norm of {sigma.item()}; pass a sound one"
            )
        folded[f"{prefix}.weight"] = w / sigma
    return folded


def _few(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    model: BigGAN,
    where: str,
    defaulted: list[str] | tuple[str, ...] = (),
) -> None:
    """Strict check: the same keys as the config's network, the same shapes.

    ``model`` may live on the meta device. ``defaulted`` names the fields
    the config left out, for the message.
    """
    expected = stored_shapes(model)
    fix = (
        _assumed(list(defaulted)) + f"; use the {CONFIG_NAME} saved with these weights"
    )
    fix = fix.removeprefix("; ")
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
    try:
        with torch.device("meta"):  # shapes only: a wrong config allocates nothing
            shapes_only = BigGAN(config)
    except (RuntimeError, OverflowError) as exc:  # sizes past what torch can count
        raise CheckpointError(
            f"{folder / CONFIG_NAME} describes a network too large to build "
            f"({str(exc).splitlines()[0][:80]}); use the {CONFIG_NAME} saved "
            "with these weights"
        ) from None
    check_state_dict(
        state, shapes_only, str(folder), defaulted_fields(folder / CONFIG_NAME)
    )
    with torch.random.fork_rng(devices=[]):  # loading draws no random numbers
        model = BigGAN(config)
    folded = fold_spectral_norm(state, spectral_prefixes(model), str(folder))
    model.load_state_dict(folded)
    model.requires_grad_(False).eval()
    info = {
        "weights": str(folder),
        # the tensors only: config.json may gain class_names or be reformatted
        "sha256": weights_sha256(folder / WEIGHTS_NAME),
        "config": attrs.asdict(config),
    }
    if names:
        info["class_names"] = list(names)
    return Loaded(model, config, info, names)
