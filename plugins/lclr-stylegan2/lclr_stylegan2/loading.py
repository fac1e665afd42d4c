"""Reading and writing StyleGAN2 checkpoints, safely.

The layout is the one the common PyTorch port and its converter write:
``{"g_ema": state_dict, "latent_avg": (D,) tensor}``, optionally with
``"lclr_meta"`` (plain JSON-able data: the architecture and class names).
A bare state dict is accepted too. Files are read with
``torch.load(..., weights_only=True)``, so loading never runs code from them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from lclr.errors import CheckpointError

from .model import StyleGAN2, standard_channels

log = logging.getLogger(__name__)

EMBEDDED_WEIGHTS = Path(__file__).parent / "weights" / "shapes32.pt"
"""The default weights shipped with the package (the shapes world, 32 px)."""

ARCH_FIELDS = ("size", "style_dim", "n_mlp", "channel_multiplier", "c_dim")


@attrs.frozen
class Loaded:
    """A checkpoint read from disk: the network and what came with it."""

    model: StyleGAN2
    latent_avg: torch.Tensor | None  # (D,), or None when the file had none
    meta: dict[str, Any]
    path: Path


def architecture(model: StyleGAN2) -> dict[str, Any]:
    """The JSON-able constructor arguments that rebuild ``model``."""
    return {
        "size": model.size,
        "style_dim": model.style_dim,
        "n_mlp": model.n_mlp,
        "channels": {int(r): int(c) for r, c in model.channels.items()},
        "c_dim": model.c_dim,
        "lr_mlp": model.lr_mlp,
        "blur_kernel": list(model.blur_kernel),
    }


def infer_architecture(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The architecture a state dict in the standard layout was made with.

    Raises :class:`CheckpointError` when a key it needs is absent.
    """
    try:
        style_dim = sd["conv1.conv.modulation.weight"].shape[1]
        channels = {4: sd["input.input"].shape[1]}
    except KeyError as e:
        raise CheckpointError(
            f"not a StyleGAN2 generator state dict: key {e.args[0]} missing; "
            "pass a checkpoint in the rosinality/stylegan2-pytorch layout"
        ) from None
    n_rgb = _count(sd, r"to_rgbs\.(\d+)\.bias")
    for j in range(n_rgb):
        weight = sd.get(f"convs.{2 * j}.conv.weight")
        if weight is None:
            raise CheckpointError(
                f"not a StyleGAN2 generator state dict: convs.{2 * j} missing"
                "; pass a complete checkpoint"
            )
        channels[2 ** (j + 3)] = weight.shape[1]
    arch: dict[str, Any] = {
        "size": 2 ** (n_rgb + 2),
        "style_dim": int(style_dim),
        "n_mlp": _count(sd, r"style\.(\d+)\.weight"),
        "channels": {r: int(c) for r, c in channels.items()},
        "c_dim": int(sd["embed.weight"].shape[1]) if "embed.weight" in sd else 0,
    }
    blur = sd.get("convs.0.conv.blur.kernel")
    if blur is not None and blur.ndim == 2 and not blur.is_meta:
        arch["blur_kernel"] = [float(t) for t in blur.sum(dim=1)]
    return arch


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    """How many distinct indices match ``pattern`` among the keys."""
    rx = re.compile(pattern + "$")
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def build(arch: Mapping[str, Any]) -> StyleGAN2:
    """A randomly initialised :class:`StyleGAN2` for an architecture dict."""
    channels = arch.get("channels")
    if channels is not None:
        channels = {int(r): int(c) for r, c in channels.items()}
    kwargs = {
        "size": int(arch["size"]),
        "style_dim": int(arch.get("style_dim", 512)),
        "n_mlp": int(arch.get("n_mlp", 8)),
        "channel_multiplier": int(arch.get("channel_multiplier", 2)),
        "channels": channels,
        "c_dim": int(arch.get("c_dim", 0)),
        "lr_mlp": float(arch.get("lr_mlp", 0.01)),
    }
    if arch.get("blur_kernel"):
        kwargs["blur_kernel"] = tuple(arch["blur_kernel"])
    try:
        return StyleGAN2(**kwargs)
    except ValueError as e:
        raise CheckpointError(f"cannot build StyleGAN2: {e}") from None


def read(path: str | os.PathLike) -> Any:
    """``torch.load`` a file safely, turning every failure into one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"weights file '{path}' does not exist or is not a file; "
            "pass --weights with a StyleGAN2 .pt checkpoint"
        )
    try:
        # training checkpoints of the port keep their argparse options
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure is the file's fault
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            raise CheckpointError(
                f"refused to load '{path}': it holds Python objects, not only "
                "tensors; convert it to a plain {'g_ema': state_dict} file"
            ) from None
        raise CheckpointError(
            f"'{path}' is not a PyTorch checkpoint ({type(e).__name__}: "
            f"{first[:120]}); pass a .pt file written by torch.save"
        ) from None


def _split(ckpt: Any, path: Path) -> tuple[dict, Any, dict]:
    """``(state_dict, latent_avg or None, meta)`` from a loaded object."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(
            f"'{path}' holds a {type(ckpt).__name__}, not a checkpoint dict; "
            "pass a file with {'g_ema': state_dict, 'latent_avg': tensor}"
        )
    if "g_ema" in ckpt:
        sd, latent_avg = ckpt["g_ema"], ckpt.get("latent_avg")
        meta = ckpt.get("lclr_meta") or {}
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd, latent_avg, meta = dict(ckpt), None, {}
    else:
        found = ", ".join(sorted(map(str, ckpt))[:6]) or "nothing"
        raise CheckpointError(
            f"'{path}' has no 'g_ema' generator (found: {found}); pass a "
            "StyleGAN2 checkpoint with a 'g_ema' state dict"
        )
    if not isinstance(sd, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in sd.values()
    ):
        raise CheckpointError(
            f"'{path}': 'g_ema' is not a state dict of tensors; "
            "pass a checkpoint saved from the generator's state_dict()"
        )
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"'{path}': 'lclr_meta' is not a dict; remove it")
    return dict(sd), latent_avg, dict(meta)


def _fill_noise(sd: dict, model: StyleGAN2, noise_seed: int) -> None:
    """Add the constant noise buffers a checkpoint lacks, from a seed."""
    gen = torch.Generator().manual_seed(noise_seed)
    drawn = []
    for name, buf in model.noises.named_buffers():
        key = f"noises.{name}"
        if key not in sd:
            sd[key] = torch.randn(buf.shape, generator=gen)
            drawn.append(key)
    if drawn:
        log.info("checkpoint has no %s; drawn from seed %d", drawn[0], noise_seed)


def _check_keys(model: StyleGAN2, sd: Mapping[str, torch.Tensor], path) -> None:
    """A one-line error listing missing, unexpected and misshapen keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and sd[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
            problems.append(f"{label} keys {', '.join(keys[:4])}{more}")
    if wrong:
        more = f" (+{len(wrong) - 2} more)" if len(wrong) > 2 else ""
        problems.append(f"shape mismatch {'; '.join(wrong[:2])}{more}")
    if problems:
        raise CheckpointError(
            f"'{path}' does not fit a {model.size}px StyleGAN2: "
            + "; ".join(problems)
            + "; check the architecture options (size, style_dim, n_mlp, "
            "channel_multiplier, c_dim) or the file"
        )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    arch: Mapping[str, Any] | None = None,
    noise_seed: int = 0,
) -> Loaded:
    """Read a checkpoint and load it into a matching :class:`StyleGAN2`.

    The architecture comes from ``arch`` where given (keys of
    :data:`ARCH_FIELDS`), else from the file's ``lclr_meta``, else is inferred
    from the state dict. Absent noise buffers are drawn from ``noise_seed``.
    Every problem is a :class:`CheckpointError`.
    """
    path = Path(path)
    sd, latent_avg, meta = _split(read(path), path)
    spec = dict(meta.get("arch") or infer_architecture(sd))
    given = {k: v for k, v in (arch or {}).items() if v is not None}
    if "channel_multiplier" in given or "size" in given:
        spec.pop("channels", None)  # the user states the standard table
    spec.update(given)
    model = build(spec)
    _fill_noise(sd, model, noise_seed)
    _check_keys(model, sd, path)
    model.load_state_dict(sd, strict=True)
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != (
            model.style_dim
        ):
            raise CheckpointError(
                f"'{path}': latent_avg is not a ({model.style_dim},) tensor; "
                "remove it or fix the file"
            )
        latent_avg = latent_avg.reshape(model.style_dim).float()
    log.debug("loaded %s: %s", path, architecture(model))
    return Loaded(model=model, latent_avg=latent_avg, meta=meta, path=path)


def save_checkpoint(
    path: str | os.PathLike,
    model: StyleGAN2,
    latent_avg: torch.Tensor | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{"g_ema", "latent_avg", "lclr_meta"}`` atomically.

    ``meta`` must be JSON-able (e.g. ``{"class_names": [...]}``); the
    architecture is added under ``"arch"``. Written to a temporary file in
    the same folder, then renamed over ``path``.
    """
    path = Path(path)
    meta = {**dict(meta or {}), "arch": architecture(model)}
    json.dumps(meta)  # TypeError here: meta must stay plain data
    ckpt: dict[str, Any] = {
        "g_ema": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "lclr_meta": meta,
    }
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg.detach().cpu().reshape(-1).float()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = [
    "ARCH_FIELDS",
    "EMBEDDED_WEIGHTS",
    "Loaded",
    "architecture",
    "build",
    "infer_architecture",
    "load_checkpoint",
    "save_checkpoint",
    "standard_channels",
]
