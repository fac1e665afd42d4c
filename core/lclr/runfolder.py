"""The run folder: config, resumable state, exported directions, metrics.

Layout::

    config.json              the effective RunConfig
    state.pt                 training state for --resume (weights_only-safe)
    directions.safetensors   the learnt directions, portable
    directions.json          metadata: generator, layer, space, K, alpha...
    metrics.jsonl            one JSON object per logged step
    images/                  grids and animations from `lclr render`

Every file is written atomically (temporary file, then rename), and nothing
read from a run folder can execute code.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from lclr.config import RunConfig
from lclr.errors import CheckpointError, RunFolderError

log = logging.getLogger(__name__)

CONFIG = "config.json"
STATE = "state.pt"
DIRECTIONS = "directions.safetensors"
DIRECTIONS_META = "directions.json"
METRICS = "metrics.jsonl"
IMAGES = "images"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # the mode a plain open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    """Read a training state; refuses anything but tensors and plain data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns before refusing a pickle
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunFolderError(
            f"{path.parent} has no {STATE}, so it cannot be resumed (a run "
            "stopped before its first save has none): start a new run with "
            "another --out, or delete the folder first"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a valid lclr training state ({_short(exc)}); "
            "start a new run instead"
        ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(
            f"{path} is not an lclr training state; start a new run instead"
        )
    return state


def check_new_folder(folder: Path) -> None:
    """Refuse to write a new run into a folder that already holds files."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(
            f"{folder} exists and is not a folder; choose another --out"
        )
    if folder.is_dir() and any(folder.iterdir()):
        hint = (
            f"resume it with `lclr run --resume {folder}`"
            if (folder / STATE).exists()
            else "choose another --out"
        )
        raise RunFolderError(f"{folder} is not empty; {hint}")


def read_config(folder: Path) -> RunConfig:
    path = Path(folder) / CONFIG
    if Path(folder).exists() and not Path(folder).is_dir():
        raise RunFolderError(f"{folder} is a file, not a run folder")
    if not Path(folder).is_dir():
        raise RunFolderError(f"run folder {folder} does not exist")
    if not path.exists():
        raise RunFolderError(f"{folder} has no {CONFIG}; it is not an lclr run folder")
    return RunConfig.from_file(path)


def write_config(folder: Path, config: RunConfig) -> None:
    atomic_write(Path(folder) / CONFIG, config.to_json().encode())


def export_directions(folder: Path, tensors: dict, meta: dict[str, Any]) -> None:
    """Write the directions as safetensors with JSON metadata beside them."""
    from safetensors.torch import save

    text = json.dumps(meta, sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(Path(folder) / DIRECTIONS, save(tensors, metadata={"lclr": text}))
    atomic_write(
        Path(folder) / DIRECTIONS_META, (json.dumps(meta, indent=2) + "\n").encode()
    )


def read_directions(folder: Path) -> tuple[dict, dict]:
    """The exported tensors and metadata of a run."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / DIRECTIONS
    try:
        with safe_open(str(path), framework="pt") as f:  # one read, no code
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
            meta = json.loads((f.metadata() or {}).get("lclr", "{}"))
    except FileNotFoundError:
        raise RunFolderError(f"{folder} has no {DIRECTIONS} yet") from None
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a valid directions file: {_short(exc)}"
        ) from None
    return tensors, meta


def weights_changed(meta: dict[str, Any], generator) -> str | None:
    """What differs, in words, when ``generator``'s weights are not the
    ones a run's directions ``meta`` recorded (by SHA-256), else None.

    A run recorded before the digest existed, or a generator that gives
    none, compares as unchanged.
    """
    info = meta.get("generator_info") or {}
    then, now = info.get("sha256"), generator.describe().get("sha256")
    if not then or not now or then == now:
        return None
    name = meta.get("generator", "generator")
    digests = f"SHA-256 {now[:12]}, the run's {then[:12]}"
    if meta.get("weights") is None:
        return (
            f"the embedded {name} weights have changed since the run was "
            f"trained ({digests}; a new version of the plugin ships new ones)"
        )
    return (
        f"the {name} weights at {meta['weights']} are not those the run was "
        f"trained on ({digests})"
    )


def truncate_metrics(folder: Path, step: int) -> None:
    """Drop metric lines past ``step`` (logged after the last checkpoint)."""
    path = Path(folder) / METRICS
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write(path, ("\n".join(kept) + "\n" if kept else "").encode())


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def claim_new_folder(base: Path) -> Path:
    """Create and return ``base``, or ``base-2``, ``base-3``... if taken.

    ``os.mkdir`` is atomic, so two runs started in the same second never
    share a folder.
    """
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise RunFolderError(f"too many runs named {base}*; pass --out")
