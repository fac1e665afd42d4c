"""How the heavy half of a training step runs: memory and device settings.

The trainer's step is the generator's truncated forward on the K·N edited
codes, the objective on the feature changes, and the backward pass. This
module runs that part:

- in one batch when it fits in memory, exactly as written in DESIGN.md;
- otherwise in micro-batches by a two-pass scheme that really bounds
  memory: every chunk's features first without a graph, then the loss and
  its gradient w.r.t. the features, then each chunk again with a graph,
  back-propagating its slice of that gradient (checkpointing per chunk).
  The result equals the one-batch step up to float rounding;
- under bf16 autocast on CUDA (the loss stays in float32), channels-last
  and ``torch.compile`` when asked.

The chunk size is the user's (``chunk_size``) or chosen from a budget
(``max_memory``, default: what the device has free) and a per-code memory
estimate probed once on one and two codes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import weakref
from collections.abc import Callable

import torch

from lclr.errors import ConfigError

log = logging.getLogger(__name__)

GIB = 2**30
# Share of the free memory the automatic budget allows itself.
FREE_SHARE = 0.8
# Backward pass transients (activation gradients) on top of the saved graph.
GRAPH_FACTOR = 1.5


class OutOfMemory(ConfigError):
    """The step did not fit on the device; the message says what to lower."""


# Device settings -----------------------------------------------------------


def use_autocast(config, device: torch.device) -> bool:
    """bf16 autocast: the config's choice, by default on for CUDA only."""
    if config.autocast is None:
        return device.type == "cuda"
    return bool(config.autocast)


def autocast(config, device: torch.device):
    """The context the generator's forward runs in."""
    if not use_autocast(config, device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def prepare_generator(generator, config):
    """Channels-last and ``torch.compile`` of the truncated forward, if asked."""
    if config.channels_last:
        # 4-d weights and constants only (Module.to refuses other ranks);
        # activations computed from them follow their layout
        with torch.no_grad():
            for t in [*generator.parameters(), *generator.buffers()]:
                if t.dim() == 4:
                    t.data = t.data.contiguous(memory_format=torch.channels_last)
    if config.compile:
        # an instance attribute shadows the method; layer names are constants
        generator.features = torch.compile(generator.features)
    return generator


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision features to float32 (others unchanged, no copy)."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


# The edited forward, the objective, the backward ------------------------------


def features_of(generator, codes, layer, chunk_size=None) -> torch.Tensor:
    """Truncated forward, flattened to (M, F), in chunks when asked; no graph."""
    if not chunk_size or codes.shape[0] <= chunk_size:
        return generator.features(codes, layer).flatten(1)
    out = None
    for start in range(0, codes.shape[0], chunk_size):
        part = generator.features(codes[start : start + chunk_size], layer)
        part = part.flatten(1)
        if out is None:  # filled in place: no list of parts, no concatenation
            out = part.new_empty(codes.shape[0], part.shape[1])
        out[start : start + part.shape[0]] = part
    return out


def forward_backward(
    generator,
    layer: str,
    codes: torch.Tensor,
    base: torch.Tensor,
    objective,
    shape: tuple[int, int],
    *,
    chunk_size: int | None = None,
    precision=contextlib.nullcontext,
    loss_fn: Callable | None = None,
):
    """Feature changes of the K·N edited ``codes``, the loss, and backward.

    ``base`` is the ``(N, F)`` transformed base features, ``shape`` (K, N).
    ``loss_fn`` maps the ``(K, N, F)`` changes to ``(loss, metrics)``; the
    objective by default. Gradients are accumulated into the parameters the
    codes depend on (and the objective's head); returns ``(loss, metrics)``.
    """
    loss_fn = loss_fn or objective
    k, n = shape

    def changes_of(feats):
        feats = objective.transform_features(upcast(feats))
        return feats.view(k, n, -1) - base[None]  # (K, N, F)

    if not chunk_size or codes.shape[0] <= chunk_size:
        with precision():
            feats = generator.features(codes, layer).flatten(1)
        loss, metrics = loss_fn(changes_of(feats))
        loss.backward()
        return loss, metrics

    # Pass 1: every chunk's features, without a graph; the loss and its
    # gradient w.r.t. the features (and the objective's head).
    leaf = codes.detach()
    with torch.no_grad(), precision():
        feats = features_of(generator, leaf, layer, chunk_size)
    feats = upcast(feats).requires_grad_(True)
    transformed = objective.transform_features(feats)
    if transformed is feats:
        # the paper's objective takes differences of the raw features: they
        # become their changes in place, and the gradient w.r.t. a change is
        # the one w.r.t. its feature, so two (K·N, F) tensors are held, not 3
        with torch.no_grad():
            feats.view(k, n, -1).sub_(base[None])
        changes = feats.view(k, n, -1)
    else:
        changes = transformed.view(k, n, -1) - base[None]
    loss, metrics = loss_fn(changes)
    loss.backward()
    grad = feats.grad  # (K·N, F)
    changes = transformed = feats = None

    # Pass 2: each chunk again with its graph, back-propagating its slice.
    leaf.requires_grad_(True)
    for start in range(0, codes.shape[0], chunk_size):
        part = leaf[start : start + chunk_size]
        with precision():
            out = generator.features(part, layer).flatten(1)
        upcast(out).backward(grad[start : start + chunk_size])
    if codes.requires_grad:
        codes.backward(leaf.grad)
    return loss, metrics


def held_copies(raw: torch.Tensor, transformed: torch.Tensor) -> int:
    """``(K·N, F)`` tensors a micro-batched step holds, from what the
    objective's ``transform_features`` made of ``raw`` features: the changes
    and their gradient, plus the features when they were transformed (see
    :func:`forward_backward`)."""
    return 2 if transformed is raw else 3


# Choosing the chunk size ------------------------------------------------------


_probes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def graph_bytes(generator, layer, codes, precision=contextlib.nullcontext):
    """``(per_code, fixed)`` bytes the autograd graph of the truncated
    forward keeps, measured on one and on two codes like ``codes``."""
    cache = _probes.setdefault(generator, {})
    key = (layer, tuple(codes.shape[1:]), codes.dtype, str(codes.device))
    if key not in cache:
        one = _saved_bytes(generator, layer, codes[:1], precision)
        two = _saved_bytes(generator, layer, codes[:1].expand(2, *codes.shape[1:]),
                           precision)  # fmt: skip
        per_code = max(two - one, math.ceil(two / 2))
        cache[key] = (per_code, max(one - per_code, 0))
    return cache[key]


def _saved_bytes(generator, layer, codes, precision) -> int:
    """Bytes of the distinct storages the forward saves for backward."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    x = codes.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), precision():
        out = generator.features(x, layer)
    return sum(seen.values()) + out.numel() * out.element_size()


def free_bytes(device: torch.device) -> int | None:
    """Memory the device has free now, or None when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def plan_chunks(config, generator, layer, codes, feature_dim, precision, copies=3):
    """The chunk size for ``codes`` (K·N of them): None for one batch.

    ``config.chunk_size`` wins; else the budget ``config.max_memory`` GiB
    (default: a share of what the device has free) must hold the features
    the loss compares (``copies`` ``(K·N, F)`` float32 tensors, see
    :func:`held_copies`) and one chunk's graph.
    """
    m = codes.shape[0]
    if config.chunk_size:
        return config.chunk_size if config.chunk_size < m else None
    # decided once per run's shape, so free memory that varies between
    # steps never switches a run between one batch and micro-batches
    cache = _probes.setdefault(generator, {})
    key = ("plan", layer, tuple(codes.shape), config.max_memory, copies)
    if key not in cache:
        cache[key] = _plan(
            config, generator, layer, codes, feature_dim, precision, copies
        )
    return cache[key]


def size_text(nbytes: float) -> str:
    """``nbytes`` for a message: GiB from 1 GiB on, else MiB (at least 0.1)."""
    if nbytes >= GIB:
        return f"{nbytes / GIB:.1f} GiB"
    return f"{max(nbytes / 2**20, 0.1):.1f} MiB"


def _plan(config, generator, layer, codes, feature_dim, precision, copies):
    m = codes.shape[0]
    if config.max_memory is not None:
        budget = config.max_memory * GIB
    else:
        free = free_bytes(codes.device)
        if free is None:
            return None
        budget = free * FREE_SHARE
    per_code, fixed = graph_bytes(generator, layer, codes, precision)
    held = copies * m * feature_dim * 4  # features, changes, gradient
    if held + fixed + m * per_code * GRAPH_FACTOR <= budget:
        return None
    chunk = int((budget - held - fixed) // (per_code * GRAPH_FACTOR))
    if chunk < 1:
        need = held + fixed + per_code * GRAPH_FACTOR
        message = (
            f"one step needs at least {size_text(need)} at layer {layer} "
            f"(K·N = {m} feature changes of size {feature_dim}); "
            f"{size_text(budget)} available: lower -k or --batch-size, "
            "or pick an earlier layer"
        )
        if config.max_memory is not None:
            raise ConfigError(message + ", or raise --max-memory")
        log.warning("%s; trying chunks of 1", message)
        chunk = 1
    log.info("micro-batches of %d of the %d edited codes", chunk, m)
    return chunk


@contextlib.contextmanager
def out_of_memory_is_an_error(codes: torch.Tensor, chunk: int | None):
    """A CUDA out-of-memory error as one line that says what to do."""
    try:
        yield
    except torch.OutOfMemoryError:
        size = chunk or codes.shape[0]
        raise OutOfMemory(
            f"out of device memory running {size} edited codes at once; "
            "pass --max-memory GIB (below what the GPU has free) or a smaller "
            "--chunk-size"
        ) from None
