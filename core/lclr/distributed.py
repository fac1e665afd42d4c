"""Data-parallel training on torch.distributed, as started by ``torchrun``.

A run's global batch is G·N: N latents from each of G seed streams, where
G is ``RunConfig.world_size``. With P processes (P divides G) each samples
G/P streams; stream 0 is seeded with the run's seed itself, so a one-stream
run is exactly a single-process run, and one process with ``world_size=G``
reproduces a G-process run on the same latents.

Each rank all-gathers the feature changes with gradient before the loss, so
every rank computes the same loss on the whole global batch; the gather's
backward sums the G identical copies of each slice's gradient, so the mean
of the direction gradients over ranks is the gradient of that one loss.

Without torchrun's environment (WORLD_SIZE > 1) every helper here is a
no-op and the trainer runs as a single process.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import re
from collections.abc import Iterator
from datetime import timedelta

import attrs
import torch

from lclr.errors import ConfigError, ProcessGroupError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "LCLR_DIST_TIMEOUT"
"""Seconds a collective may wait for the other processes (default 300)."""
DEFAULT_TIMEOUT = 300


@attrs.frozen
class World:
    """This process's place in the job: P processes, its rank, its local GPU."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def writer(self) -> bool:
        """Only rank 0 writes the run folder."""
        return self.rank == 0


def from_env() -> World:
    """The world torchrun describes in WORLD_SIZE, RANK and LOCAL_RANK."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ConfigError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers; launch with torchrun"
        ) from None
    if not (size >= 1 and 0 <= rank < size and local >= 0):
        raise ConfigError(
            f"RANK {rank} does not fit WORLD_SIZE {size}; launch with torchrun"
        )
    return World(size, rank, local)


def current() -> World:
    """The world of the process group in use; one process when there is none."""
    if not _initialized():
        return World()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return World(_dist().get_world_size(), _dist().get_rank(), local)


def _dist():
    import torch.distributed

    return torch.distributed


def _initialized() -> bool:
    return _dist().is_available() and _dist().is_initialized()


def _alone() -> bool:
    """True when no process group joins this process to others."""
    return not _initialized() or _dist().get_world_size() == 1


# The process group ---------------------------------------------------------


@contextlib.contextmanager
def session(device: str) -> Iterator[World]:
    """Join the job torchrun started, for the length of the block.

    NCCL when ``device`` is a GPU (each rank on cuda:LOCAL_RANK), gloo
    otherwise. Reuses a process group that is already up and leaves it
    up; one it created is destroyed at the end.
    """
    world = from_env()
    if world.size == 1 or _initialized():
        yield current()
        return
    if not _dist().is_available():
        raise ConfigError(
            "this torch build has no torch.distributed; run one process instead"
        )
    kind = torch.device(device).type if _parses(device) else "cpu"
    if kind not in ("cpu", "cuda"):
        raise ConfigError(
            f"--device {device} cannot be shared by several processes; use cpu or cuda"
        )
    backend = "nccl" if kind == "cuda" else "gloo"
    if kind == "cuda":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if world.local_rank >= gpus:
            raise ConfigError(
                f"process {world.local_rank} of this machine has no GPU of its own "
                f"({gpus} found); pass --nproc-per-node {gpus} or fewer"
            )
        torch.cuda.set_device(world.local_rank)
    # torch._dynamo, imported lazily by the first optimizer, keeps references
    # to a process group that exists when it loads, so destroying the group
    # would not free it: its worker threads would then outlive the
    # interpreter and abort the process at exit. Loaded first, it keeps none.
    importlib.import_module("torch._dynamo")
    try:
        _dist().init_process_group(backend, timeout=timedelta(seconds=_timeout()))
    except ValueError as exc:
        raise ConfigError(
            f"cannot join the job ({_first_line(exc)}); launch with torchrun"
        ) from None
    except RuntimeError as exc:
        raise ProcessGroupError(
            f"cannot reach the other processes ({_first_line(exc)})"
        ) from None
    log.info("rank %d of %d (%s)", world.rank, world.size, backend)
    try:
        yield current()
    finally:
        _dist().destroy_process_group()


def _parses(device: str) -> bool:
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        return False
    return True


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds; got '{text}'")
    return seconds


def local_device(name: str, world: World) -> str:
    """The device of this rank: cuda:LOCAL_RANK for GPUs, else ``name``."""
    if world.size == 1 or not _parses(name):
        return name
    device = torch.device(name)
    if device.type != "cuda":
        return name
    if device.index not in (None, world.local_rank):
        log.warning(
            "--device %s: with torchrun each process uses cuda:LOCAL_RANK", name
        )
    return f"cuda:{world.local_rank}"


# Seed streams and the global batch -----------------------------------------


def stream_seed(seed: int, stream: int) -> int:
    """The seed of latent stream ``stream``; stream 0 uses ``seed`` itself."""
    if stream == 0:
        return seed
    digest = hashlib.sha256(f"lclr-stream:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # below 2**63


def local_streams(world_size: int, world: World) -> range:
    """The streams this process samples: G/P consecutive ones."""
    per = world_size // world.size
    return range(world.rank * per, (world.rank + 1) * per)


def fit_world_size(config, world: World, *, resume: bool):
    """``config`` with G set for this job, or a ConfigError when P cannot
    split it. A new run with the default G = 1 takes G = P; no run's global
    batch ever changes on resume."""
    g, p = config.world_size, world.size
    if not resume and g == 1:
        return config.evolve(world_size=p)
    if g % p == 0:
        if resume and g != p:
            log.warning(
                "this run has a global batch of %d x %d latents (world_size %d); "
                "each of the %d processes samples %d of its seed streams",
                g, config.batch_size, g, p, g // p,
            )  # fmt: skip
        return config
    if resume:
        fits = [str(d) for d in range(1, g + 1) if g % d == 0]
        how = (
            "in one process (lclr run --resume)"
            if g == 1
            else f"with {', '.join(fits[:-1])} or {fits[-1]} processes"
        )
        raise ConfigError(
            f"this run was trained with world_size {g} (a global batch of "
            f"{g} x {config.batch_size}), not {p} processes; resume it {how}"
        )
    raise ConfigError(
        f"--world-size {g} cannot be split over {p} processes; "
        f"pass a multiple of {p}, or leave it out"
    )


def note_batch_norm(world: World, *modules) -> list[str]:
    """Warn that batch norm layers normalise over each process's own samples.

    Their statistics are not synchronised (torch's SyncBatchNorm is GPU-only),
    so such a run differs from one process on the global batch. Returns the
    layers found, by their running-mean buffers.
    """
    found = [
        name.removesuffix(".running_mean")
        for m in modules
        for name in m.state_dict()
        if name.endswith("running_mean")
    ]
    if found and world.size > 1:
        log.warning(
            "batch norm (%s) normalises over each process's own samples, so this "
            "run differs from one process on the global batch",
            ", ".join(found),
        )
    return found


def resume_command(folder) -> str:
    """How to continue ``folder`` with the same number of processes."""
    world = current()
    if world.size == 1:
        return f"lclr run --resume {folder}"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
    if local == world.size:
        how = f"--standalone --nproc-per-node {local}"
    else:  # several machines: their rendezvous options are the user's own
        how = f"--nnodes {world.size // local} --nproc-per-node {local} --rdzv-..."
    return f"torchrun {how} -m lclr run --resume {folder}"


# Collectives (no-ops for one process) ---------------------------------------


def gather_samples(changes: torch.Tensor) -> torch.Tensor:
    """(K, n, F) on each rank → (K, P·n, F), in rank order, with gradient."""
    if _alone():
        return changes
    return _GatherSamples.apply(changes)


class _GatherSamples(torch.autograd.Function):
    """All-gather along the sample axis; the backward pass gives each rank
    the sum over all ranks of the gradient of its own slice.

    Every rank computes the same loss, so that sum is P times the slice's
    gradient, and :func:`average_gradients` divides by P again.
    """

    @staticmethod
    def forward(ctx, x):  # (K, n, F)
        parts = [torch.empty_like(x) for _ in range(_dist().get_world_size())]
        with _collective("gather the feature changes"):
            _dist().all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=1)  # (K, P·n, F)

    @staticmethod
    def backward(ctx, grad):  # (K, P·n, F)
        # An all-reduce, not a reduce-scatter: gloo and NCCL both have it
        # under one name in every torch since 2.2; it moves about twice the
        # bytes of the reduce-scatter it stands for.
        grad = grad.contiguous()
        with _collective("send back the gradients"):
            _dist().all_reduce(grad)
        n = grad.shape[1] // _dist().get_world_size()
        rank = _dist().get_rank()
        return grad[:, rank * n : (rank + 1) * n]


def average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Replace each parameter's gradient by its mean over the ranks."""
    if _alone():
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one message for all
    with _collective("average the gradients"):
        _dist().all_reduce(flat)
    flat /= _dist().get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (a Ctrl-C, say)."""
    if _alone():
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    with _collective("agree on stopping"):
        _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
    return bool(t.item())


def gather_states(states: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's RNG states, in stream order (collective: all ranks call)."""
    if _alone():
        return list(states)
    mine = torch.stack(states).to(_comm_device())  # (G/P, L) uint8
    parts = [torch.empty_like(mine) for _ in range(_dist().get_world_size())]
    with _collective("collect the random states"):
        _dist().all_gather(parts, mine)
    return [row.cpu() for part in parts for row in part]


def broadcast_text(text: str | None) -> str:
    """Rank 0's ``text`` on every rank."""
    if _alone():
        return text
    device = _comm_device()
    data = (text or "").encode() if current().writer else b""
    size = torch.tensor([len(data)], device=device)
    with _collective("share the run folder"):
        _dist().broadcast(size, 0)
        buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
        if data:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        _dist().broadcast(buf, 0)
    return bytes(buf.cpu().tolist()).decode()


def _comm_device() -> torch.device:
    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def _collective(what: str):
    """A collective that fails because a peer is gone is one clear error."""
    try:
        yield
    except RuntimeError as exc:  # gloo and NCCL report lost peers this way
        raise ProcessGroupError(
            f"could not {what}: another process of this run stopped or timed "
            f"out ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    line = re.sub(r"^(\[[^\]]*\]:?\s*)+", "", lines[0])  # gloo's source location
    return line.split(". ")[0][:160]
