"""Reading and writing StyleGAN2 checkpoints, safely.

What a file is, is decided by its content, not its name:

- lclr's own format (:func:`save_generator`): safetensors whose metadata
  holds the architecture as JSON; read with ``safetensors``.
- The PyTorch port's layout, ``{"g_ema": state_dict, "latent_avg": (D,)}``,
  optionally with ``"lclr_meta"`` (JSON-able: the architecture, class
  names); its training snapshots (``g``, ``d``, ``g_ema``, optimiser states,
  an ``args`` namespace); a bare state dict. Read with
  ``torch.load(..., weights_only=True)``.
- NVIDIA's network pickles (stylegan2-ada-pytorch, stylegan3; plain pickles
  or torch zip files): read by :mod:`.safe_pickle`, converted by
  :mod:`.nvidia`.

No path runs code from the file.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from lclr.errors import CheckpointError
from lclr.runfolder import atomic_write, save_state

from . import nvidia, safe_pickle
from .model import StyleGAN2, standard_channels

log = logging.getLogger(__name__)

EMBEDDED_WEIGHTS = Path(__file__).parent / "weights" / "shapes32.pt"
"""The default weights shipped with the package (the shapes world, 32 px)."""

ARCH_FIELDS = (
    "size",
    "style_dim",
    "n_mlp",
    "channel_multiplier",
    "c_dim",
    "conv_clamp",
)
FORMAT = "lclr-stylegan2"  # the "format" metadata of lclr's safetensors files
FORMAT_VERSION = "1"
TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # legacy torch.save


@attrs.frozen
class Loaded:
    """A checkpoint read from disk: the network and what came with it."""

    model: StyleGAN2
    latent_avg: torch.Tensor | None  # (D,), or None when the file had none
    meta: dict[str, Any]
    path: Path


def architecture(model: StyleGAN2) -> dict[str, Any]:
    """The JSON-able constructor arguments that rebuild ``model``.

    ``conv_clamp``, ``z_dim`` and ``embed_dim`` appear only when they differ
    from their defaults.
    """
    arch = {
        "size": model.size,
        "style_dim": model.style_dim,
        "n_mlp": model.n_mlp,
        "channels": {int(r): int(c) for r, c in model.channels.items()},
        "c_dim": model.c_dim,
        "lr_mlp": model.lr_mlp,
        "blur_kernel": list(model.blur_kernel),
    }
    if model.conv_clamp is not None:
        arch["conv_clamp"] = model.conv_clamp
    if model.z_dim != model.style_dim:
        arch["z_dim"] = model.z_dim
    if model.c_dim > 0 and model.embed_dim != model.style_dim:
        arch["embed_dim"] = model.embed_dim
    return arch


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
    embed = sd.get("embed.weight")
    embed_dim = int(embed.shape[0]) if embed is not None else 0
    first = sd.get("style.1.weight")
    if embed_dim and embed_dim != style_dim:
        arch["embed_dim"] = embed_dim
    if first is not None and first.shape[1] - embed_dim != style_dim:
        arch["z_dim"] = int(first.shape[1] - embed_dim)
    blur = sd.get("convs.0.conv.blur.kernel")
    if blur is not None and blur.ndim == 2 and not blur.is_meta:
        arch["blur_kernel"] = [float(t) for t in blur.sum(dim=1)]
    return arch


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    """How many distinct indices match ``pattern`` among the keys."""
    rx = re.compile(pattern + "$")
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def build(arch: Mapping[str, Any]) -> StyleGAN2:
    """A randomly initialised :class:`StyleGAN2` for an architecture dict.

    Under ``torch.device("meta")`` it costs no memory: that is how a file's
    architecture is checked before anything of its size is allocated.
    """
    try:
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
        for name in ("z_dim", "embed_dim"):
            if arch.get(name):
                kwargs[name] = int(arch[name])
        if arch.get("conv_clamp") is not None:
            kwargs["conv_clamp"] = float(arch["conv_clamp"])
        if arch.get("blur_kernel"):
            taps = tuple(arch["blur_kernel"])
            if not all(isinstance(t, (int, float)) for t in taps):
                raise TypeError(f"blur_kernel {taps!r:.40} is not a list of numbers")
            kwargs["blur_kernel"] = taps
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"malformed StyleGAN2 architecture ({_first_line(e)}); "
            "export the generator again"
        ) from None
    try:
        return StyleGAN2(**kwargs)
    except ValueError as e:
        raise CheckpointError(f"cannot build StyleGAN2: {e}") from None


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(
            f"weights '{path}' is a folder, not a file; pass a StyleGAN2 "
            ".pt, .pkl or .safetensors file (BigGAN folders: --generator biggan)"
        )
    if not path.is_file():
        raise CheckpointError(
            f"weights file '{path}' does not exist or is not a file; "
            "pass --weights with a StyleGAN2 checkpoint or network pickle"
        )


def _first_line(e: Exception) -> str:
    """``"Type: first line"`` of an exception's message, shortened."""
    text = str(e).strip()
    first = text.splitlines()[0][:120] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def read(path: str | os.PathLike) -> Any:
    """``torch.load`` a file safely, turning every failure into one line."""
    path = Path(path)
    _check_file(path)
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_torch_zip(path)
    try:
        _check_torch_nesting(path, is_zip)
        # Training snapshots of the port keep their argparse options. A
        # Namespace is safe to allow: unpickling makes an empty one and fills
        # its __dict__; no method of the file's choosing runs.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except safe_pickle.Refused as e:
        raise CheckpointError(f"refused to load '{path}': {e}") from None
    except Exception as e:  # noqa: BLE001 - any failure is the file's fault
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            raise CheckpointError(
                f"refused to load '{path}': it holds Python objects, not only "
                "tensors; convert it to a plain {'g_ema': state_dict} file"
            ) from None
        if not is_zip and sniff(path) == "torch":  # a torch header, then damage
            raise CheckpointError(
                f"'{path}' is truncated or corrupt ({_first_line(e)}); "
                "download or copy it again"
            ) from None
        raise CheckpointError(
            f"'{path}' is not a PyTorch checkpoint ("
            f"{_first_line(e)}); pass a .pt file written by torch.save"
        ) from None


def _check_torch_nesting(path: Path, is_zip: bool) -> None:
    """Scan the pickles torch.load will read for crashing nesting depths
    (torch's unpickler hashes what it builds, as every unpickler does)."""
    if is_zip:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name.endswith(".pkl"):
                    safe_pickle.check_nesting(io.BytesIO(zf.read(name)))
        return
    with open(path, "rb") as f:
        if f.read(len(TORCH_MAGIC)) != TORCH_MAGIC:
            return  # not torch's: torch.load refuses it before unpickling
        f.seek(0)
        # the legacy format: magic, protocol, system info, object, keys
        for _ in range(5):
            safe_pickle.check_nesting(f, rewind=False)


def _check_torch_zip(path: Path) -> None:
    """Refuse zip entries torch does not write (they could unpack to any
    size); a zip file whose directory cannot be read is damaged."""
    try:
        with zipfile.ZipFile(path) as zf:
            safe_pickle.check_zip(zf, path.stat().st_size)
    except safe_pickle.Refused as e:
        raise CheckpointError(f"refused to load '{path}': {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(
            f"'{path}' is truncated or corrupt ({_first_line(e)}); "
            "download or copy it again"
        ) from None


def sniff(path: Path) -> str:
    """What a file holds, from its first bytes and nothing else.

    ``"safetensors"``, ``"torch"`` (a torch zip file or legacy stream that
    ``torch.load`` reads), ``"nvidia-zip"`` (a torch zip file holding
    NVIDIA's persistent networks), or ``"pickle"`` (anything else: a plain
    pickle stream, such as NVIDIA's ``.pkl``, or not a checkpoint at all).
    """
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) > 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= path.stat().st_size - 8:
            return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                safe_pickle.check_zip(zf, path.stat().st_size)
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if len(names) == 1 and b"torch_utils" in zf.read(names[0]):
                    return "nvidia-zip"
        except (zipfile.BadZipFile, OSError, EOFError, safe_pickle.Refused):
            pass  # read() says what is wrong with it
        return "torch"
    if head.startswith(TORCH_MAGIC):
        return "torch"
    return "pickle"


def read_pickle(path: Path, kind: str) -> Any:
    """An NVIDIA network pickle (plain or zip), read by the safe unpickler."""
    try:
        if kind == "nvidia-zip":
            return safe_pickle.load_zip(path)
        # from memory: a corrupt length then reads short instead of asking
        # for a buffer of that length
        return safe_pickle.loads_stream(io.BytesIO(path.read_bytes()))
    except safe_pickle.Refused as e:
        raise CheckpointError(f"refused to load '{path}': {e}") from None
    except Exception as e:  # noqa: BLE001 - any failure is the file's fault
        cut = isinstance(e, (EOFError, zipfile.BadZipFile, MemoryError))
        if cut or "truncated" in str(e):
            raise CheckpointError(
                f"'{path}' is truncated or corrupt ("
                f"{_first_line(e)}); download or copy it again"
            ) from None
        raise CheckpointError(
            f"'{path}' is not a PyTorch checkpoint or network pickle "
            f"({_first_line(e)}); pass a StyleGAN2 .pt, "
            ".pkl or .safetensors file"
        ) from None


def read_safetensors(path: Path) -> tuple[dict, Any, dict]:
    """``(state_dict, latent_avg or None, meta)`` of a safetensors file.

    lclr's own files carry ``format``, ``arch`` and ``meta`` metadata; a
    safetensors file without them is read as a bare state dict.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(header.get("meta", "{}"))
        if isinstance(meta, dict) and "arch" in header:
            meta["arch"] = json.loads(header["arch"])
    except Exception as e:  # noqa: BLE001 - any failure is the file's fault
        raise CheckpointError(
            f"'{path}' is truncated or corrupt ({_first_line(e)}); export it again"
        ) from None
    if header.get("format", FORMAT) != FORMAT:
        raise CheckpointError(
            f"'{path}' is a safetensors file of '{header.get('format')}', not "
            "an lclr StyleGAN2 generator; pass one written by export-generator"
        )
    return sd, sd.pop("latent_avg", None), _check_meta(meta, path)


def _check_meta(meta: Any, path: Path) -> dict:
    """lclr's metadata, if it has the types lclr writes; else one line."""
    arch = meta.get("arch") if isinstance(meta, Mapping) else None
    names = meta.get("class_names") if isinstance(meta, Mapping) else None
    if (
        not isinstance(meta, Mapping)
        or not isinstance(arch, (Mapping, type(None)))
        or not isinstance(names, (list, type(None)))
        or not all(isinstance(n, str) for n in names or [])
    ):
        raise CheckpointError(
            f"'{path}' has malformed lclr metadata (arch, class names); "
            "export the generator again"
        )
    return dict(meta)


def read_weights(path: str | os.PathLike) -> tuple[dict, Any, dict]:
    """``(state_dict, latent_avg or None, meta)`` from any supported file.

    The state dict is in this plugin's layout; ``meta`` may hold ``arch``
    (the architecture), ``class_names`` and ``source`` (what the file was).
    """
    path = Path(path)
    _check_file(path)
    kind = sniff(path)
    if kind == "safetensors":
        return read_safetensors(path)
    if kind == "torch":
        return _split(read(path), path)
    data = read_pickle(path, kind)
    G = nvidia.find_generator(data, str(path))
    try:
        arch, sd, w_avg = nvidia.convert(G, str(path))
    except (ValueError, TypeError, IndexError, RuntimeError, OverflowError) as e:
        # data the converter did not foresee: the file's fault, not a bug
        raise CheckpointError(
            f"'{path}' holds a malformed StyleGAN2 generator ("
            f"{_first_line(e)}); pass an unmodified network pickle"
        ) from None
    return sd, w_avg, {"arch": arch, "source": "nvidia-pickle"}


def _split(ckpt: Any, path: Path) -> tuple[dict, Any, dict]:
    """``(state_dict, latent_avg or None, meta)`` from a loaded object."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(
            f"'{path}' holds a {type(ckpt).__name__}, not a checkpoint dict; "
            "pass a file with {'g_ema': state_dict, 'latent_avg': tensor}"
        )
    if "g_ema" in ckpt:
        sd, latent_avg = ckpt["g_ema"], ckpt.get("latent_avg")
        meta = _check_meta(ckpt.get("lclr_meta") or {}, path)
        if latent_avg is None and ({"g", "d", "args"} & set(ckpt)):
            meta = {**meta, "source": "port-training-snapshot"}
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
    return dict(sd), latent_avg, _check_meta(meta, path)


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


def _derived(key: str) -> bool:
    """Buffers that follow from the architecture or a seed, not the file."""
    return key.endswith(("blur.kernel", "upsample.kernel")) or key.startswith("noises.")


def _check_size(sd: Mapping[str, Any], path: Path) -> None:
    """Refuse tensors far larger than the file (views of a few bytes
    declared as gigabytes: loading them would allocate that much), and
    tensors holding NaN or infinity."""
    held = sum(
        t.numel() * t.element_size() for t in sd.values() if isinstance(t, torch.Tensor)
    )
    size = path.stat().st_size
    if held > 2 * size + 2**20:
        raise CheckpointError(
            f"refused to load '{path}': its tensors declare {held} bytes, far "
            f"more than the file's {size}; the file is corrupt or crafted"
        )
    for key, t in sd.items():  # a damaged float is often NaN or infinite
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(
                f"'{path}': {key} holds NaN or infinite values; the file is "
                "corrupt, download or copy it again"
            )


def _check_keys(own: Mapping, sd: Mapping[str, torch.Tensor], path, size) -> None:
    """A one-line error listing missing, unexpected and misshapen keys.

    ``own`` is the state dict the network needs (meta tensors will do).
    """
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} is {tuple(sd[k].shape)} in the file, {tuple(v.shape)} in the network"
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
            f"'{path}' does not fit a {size}px StyleGAN2: "
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

    Any file :func:`read_weights` reads. The architecture comes from
    ``arch`` where given (keys of :data:`ARCH_FIELDS`), else from the file
    (lclr's metadata, a pickle's modules), else is inferred from the state
    dict. Absent noise buffers are drawn from ``noise_seed``. Every problem
    is a :class:`CheckpointError`.
    """
    path = Path(path)
    sd, latent_avg, meta = read_weights(path)
    _check_size(sd, path)
    spec = dict(meta.get("arch") or infer_architecture(sd))
    given = {k: v for k, v in (arch or {}).items() if v is not None}
    if "channel_multiplier" in given or "size" in given:
        spec.pop("channels", None)  # the user states the standard table
    spec.update(given)
    # the file's tensors must fit before a network of its stated size is made
    try:
        with torch.device("meta"):
            shapes = build(spec).state_dict()
    except CheckpointError as e:
        raise CheckpointError(f"'{path}': {e}") from None
    derived = {k: v for k, v in shapes.items() if k not in sd and _derived(k)}
    _check_keys(shapes, {**sd, **derived}, path, spec["size"])
    with torch.random.fork_rng(devices=[]):  # loading draws no random numbers
        model = build(spec)
    for key, value in model.state_dict().items():
        if key.endswith(("blur.kernel", "upsample.kernel")):
            sd.setdefault(key, value)  # fixed FIR filters, from the arch
    _fill_noise(sd, model, noise_seed)
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
        if not torch.isfinite(latent_avg).all():
            raise CheckpointError(
                f"'{path}': latent_avg holds NaN or infinite values; remove it "
                "or copy the file again"
            )
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
    save_state(path, ckpt)
    return path


def save_generator(
    path: str | os.PathLike,
    model: StyleGAN2,
    latent_avg: torch.Tensor | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write lclr's own format: safetensors plus JSON metadata, atomically.

    Tensors: the state dict and ``latent_avg``. Metadata: ``format``,
    ``format_version``, ``arch`` (:func:`architecture`) and ``meta``
    (JSON-able, e.g. ``{"class_names": [...]}``).
    """
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if latent_avg is not None:
        tensors["latent_avg"] = latent_avg.detach().cpu().reshape(-1).float()
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": json.dumps(architecture(model)),
        "meta": json.dumps(dict(meta or {})),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save(tensors, metadata=header))
    return path


__all__ = [
    "ARCH_FIELDS",
    "EMBEDDED_WEIGHTS",
    "Loaded",
    "architecture",
    "build",
    "infer_architecture",
    "load_checkpoint",
    "read_weights",
    "save_checkpoint",
    "save_generator",
    "standard_channels",
]
