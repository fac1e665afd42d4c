"""How close lclr's training step comes to the cost of the generator itself.

For a generator, target layer, K, N and device it times, interleaved in one
process after a warm-up round:

- ``lclr``: the trainer's own ``train_step`` (sampling, directions, one
  batched truncated forward, the loss, backward, Adam);
- ``floor``: the frozen generator's truncated forward without gradient on
  the N base codes, plus forward and backward (w.r.t. the edited codes
  only) on the same K·N edited codes; nothing else. No step can be cheaper;
- ``plain``: research-code style: the generator run K times on N codes, the
  positive/negative masks rebuilt with Python loops every step, the loss by
  raw exp and division;
- ``loss``: the objective alone, forward and backward, on (K, N, F) changes.

and reports medians, step/floor, the loss's share of the step, and the peak
memory of one step of each (RSS increment on CPU, read from /proc after
returning freed memory to the system; max allocated on CUDA)::

    python benchmarks/step_speed.py --layer convs.2 -k 32 -n 16
    python benchmarks/step_speed.py --sweep --markdown sweep.md --json sweep.json

``--sweep`` runs the documented sweep (docs/performance.md) and fits step
cost against K·N. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lclr.config import RunConfig
from lclr.scripts import ArgumentParser, positive_int, run_main
from lclr.speed import OutOfMemory
from lclr.training import RunState, build_components, make_optimizer, train_step

# The sweep: (generator, layers, (K, N) points, timed rounds). The 256-px
# part is trimmed so the whole sweep takes about 15 minutes on 2 CPU cores.
KN_GRID = [(k, n) for k in (8, 32, 100) for n in (4, 16, 32)]
SWEEP = [
    ("embedded", ["conv1", "convs.0"], KN_GRID, 3),
    ("embedded", ["convs.2"], KN_GRID, 2),
    ("port256", ["conv1"], [(8, 4), (8, 16), (32, 4), (32, 16)], 2),
    ("port256", ["convs.1"], [(8, 4), (8, 16), (32, 4)], 2),
    ("port256", ["convs.3"], [(8, 4), (32, 4)], 2),
    ("port256", ["convs.5"], [(8, 4)], 2),
]
# --full: every (K, N) at every layer (for a GPU, where it takes minutes)
FULL = [
    ("embedded", ["conv1", "convs.0", "convs.2"], KN_GRID, 3),
    ("port256", ["conv1", "convs.1", "convs.3", "convs.5"], KN_GRID, 3),
]
METHODS = ("lclr", "floor", "plain", "loss")
# Wall-clock by default; --clock cpu counts this process's CPU seconds (all
# threads summed), steadier on a machine busy with something else.
CLOCK = time.perf_counter


# Generators -------------------------------------------------------------------


def random_checkpoint(size: int, style_dim: int, multiplier: int, folder: Path) -> Path:
    """A StyleGAN2 of the port's config with random weights, saved to a file."""
    from lclr_stylegan2.loading import save_checkpoint
    from lclr_stylegan2.model import StyleGAN2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = StyleGAN2(size, style_dim=style_dim, channel_multiplier=multiplier)
    path = folder / f"random{size}.pt"
    save_checkpoint(path, model, torch.zeros(style_dim), {})
    return path


def weights_for(name: str, folder: Path, style_dim: int = 512) -> str | None:
    """``embedded``: the plugin's default; ``portSIZE``: random weights of
    the port's config (style_dim 512, 8 mapping layers, multiplier 2)."""
    if name == "embedded":
        return None
    size = int(name.removeprefix("port"))
    return str(random_checkpoint(size, style_dim, 2, folder))


# The three ways of doing a step ---------------------------------------------------


class Point:
    """One comparison: a trainer run, and the floor and plain loop beside it."""

    def __init__(self, config: RunConfig, folder: Path):
        g, d, objective, layer = build_components(config)
        optimizer, scheduler = make_optimizer(config, d, objective)
        rng = torch.Generator().manual_seed(config.seed)
        self.run = RunState(config, folder, g, d, objective, layer, optimizer,
                            scheduler, rng)  # fmt: skip
        self.config, self.g, self.layer = config, g, layer
        self.device = next(d.parameters()).device
        # the plain loop trains its own copy of the directions
        plain_d = copy.deepcopy(d)
        self.plain_d = plain_d
        self.plain_opt = torch.optim.Adam(plain_d.parameters(), lr=config.lr)
        self.feature_dim = math.prod(g.layer_shape(layer))
        from lclr import speed

        self.precision = lambda: speed.autocast(config, self.device)
        self.codes = self.edited = self.grad_out = self.changes = None

    def next_codes(self) -> None:
        """The codes the trainer's next step will draw, and their edits."""
        state = self.run.rng.get_state()
        n = self.config.batch_size
        self.codes = self.g.sample_latent(n, generator=self.run.rng).to(self.device)
        self.run.rng.set_state(state)
        with torch.no_grad():
            edited = self.run.directions(self.codes, self.config.alpha)
        self.edited = edited.reshape(-1, edited.shape[-1])  # (K·N, D)

    def lclr(self) -> None:
        train_step(self.run)

    def floor(self) -> None:
        with torch.no_grad(), self.precision():
            self.g.features(self.codes, self.layer)
        leaf = self.edited.detach().requires_grad_(True)
        with self.precision():
            out = self.g.features(leaf, self.layer)
        if self.grad_out is None or self.grad_out.shape != out.shape:
            self.grad_out = torch.ones_like(out)
        torch.autograd.grad(out, leaf, self.grad_out)

    def plain(self) -> None:
        k, n = self.config.k, self.config.batch_size
        g, layer, codes, d = self.g, self.layer, self.codes, self.plain_d
        with torch.no_grad():
            base = g.features(codes, layer).flatten(1)
        changes = []
        for i in range(k):
            edited = d.edit(codes, i, self.config.alpha)
            changes.append(g.features(edited, layer).flatten(1) - base)
        f = F.normalize(torch.cat(changes), dim=1)  # (K·N, F)
        sim = torch.exp(f @ f.T / 0.5)
        m = k * n
        pos = torch.zeros(m, m, dtype=torch.bool, device=f.device)
        neg = torch.zeros(m, m, dtype=torch.bool, device=f.device)
        for a in range(k):
            for i in range(n):
                row = a * n + i
                pos[row, a * n : (a + 1) * n] = True
                pos[row, row] = False
                neg[row, : a * n] = True
                neg[row, (a + 1) * n :] = True
        loss = -torch.log((sim * pos).sum(1) / (sim * neg).sum(1)).mean()
        self.plain_opt.zero_grad()
        loss.backward()
        self.plain_opt.step()

    def loss(self) -> None:
        if self.changes is None:  # made once, outside the timings after the first
            k, n = self.config.k, self.config.batch_size
            gen = torch.Generator().manual_seed(0)
            shape = (k, n, self.feature_dim)
            self.changes = torch.randn(shape, generator=gen).to(self.device)
        changes = self.changes.detach().requires_grad_(True)
        loss, _ = self.run.objective(changes)
        loss.backward()


# Measuring ------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Return freed heap to the system, then reset VmHWM to the current RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mib(fn, device: torch.device) -> float | None:
    """Peak memory one call of ``fn`` adds, in MiB."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if not _reset_rss_peak():
        fn()
        return None
    before = _rss_kib("VmRSS")
    fn()
    peak = _rss_kib("VmHWM")
    return None if before is None or peak is None else (peak - before) / 1024


def measure(point: Point, repeats: int, methods=METHODS) -> dict:
    """Warm-up (with memory) then ``repeats`` interleaved rounds. A method
    that runs out of device memory in the warm-up is left out ("oom")."""
    device = point.device
    memory, failed = {}, []
    point.next_codes()
    for m in methods:  # warm-up round, one call each, measuring memory
        try:
            memory[m] = peak_mib(getattr(point, m), device)
        except (torch.OutOfMemoryError, OutOfMemory):
            memory[m] = None
            failed.append(m)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    methods = tuple(m for m in methods if m not in failed)
    times = {m: [] for m in methods}
    for r in range(repeats):
        point.next_codes()
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for m in order:
            sync(device)
            start = CLOCK()
            getattr(point, m)()
            sync(device)
            times[m].append(CLOCK() - start)
    med = {m: statistics.median(v) for m, v in times.items()}
    med.update({m: None for m in failed})
    row = {f"{m}_s": med[m] for m in METHODS}
    row.update({f"{m}_mib": memory[m] for m in METHODS})
    row["oom"] = failed
    row["ratio"] = _over(med["lclr"], med["floor"])
    row["plain_over_lclr"] = _over(med["plain"], med["lclr"])
    row["loss_share"] = _over(med["loss"], med["lclr"])
    return row


def _over(a, b):
    return None if a is None or b is None else a / b


def run_point(gen: str, weights, layer, k, n, args, folder) -> dict:
    config = RunConfig(
        weights=weights, layer=layer, k=k, batch_size=n, device=args.device,
        seed=0, iterations=10**9, chunk_size=args.chunk_size,
        max_memory=args.max_memory, compile=args.compile, autocast=args.autocast,
        channels_last=args.channels_last,
    )  # fmt: skip
    point = Point(config, folder)
    row = {"generator": gen, "layer": point.layer, "k": k, "n": n, "kn": k * n,
           "device": args.device, "threads": torch.get_num_threads(),
           "clock": args.clock}  # fmt: skip
    row.update(measure(point, args.repeats))
    return row


def plan_memory(args, weights) -> None:
    """What lclr would do for K·N codes within ``--plan-memory`` GiB, from
    the graph probed on one and two codes; runs no step."""
    from lclr import speed

    config = RunConfig(weights=weights, layer=args.layer, k=args.k,
                       batch_size=args.n, device=args.device,
                       max_memory=args.plan_memory)  # fmt: skip
    g, d, objective, layer = build_components(config)
    m, f = args.k * args.n, math.prod(g.layer_shape(layer))
    codes = g.sample_latent(m, seed=0).to(next(d.parameters()).device)
    per_code, fixed = speed.graph_bytes(g, layer, codes)
    with torch.no_grad():
        sample = g.features(codes[:2], layer).flatten(1)
        copies = speed.held_copies(sample, objective.transform_features(sample))
    held = copies * m * f * 4
    whole = held + fixed + m * per_code * speed.GRAPH_FACTOR
    gib = speed.GIB
    print(f"{args.generator} {layer}, K·N = {m}, F = {f}")
    print(f"graph per code:        {per_code / 2**20:.1f} MiB")
    print(f"features held ({copies}·K·N·F float32): {held / gib:.2f} GiB")
    print(f"one batch, estimated:  {whole / gib:.1f} GiB")
    try:
        chunk = speed.plan_chunks(
            config, g, layer, codes, f, contextlib.nullcontext, copies
        )
    except Exception as exc:  # the trainer's one-line refusal
        print(f"within {args.plan_memory} GiB: {exc}")
        return
    size = chunk or m
    peak = held + fixed + size * per_code * speed.GRAPH_FACTOR
    print(f"within {args.plan_memory} GiB: chunks of {size}, "
          f"estimated peak {peak / gib:.1f} GiB")  # fmt: skip


# Fits and tables ----------------------------------------------------------------------


def fit_exponent(rows, key="lclr_s") -> float | None:
    """Slope of log(time) against log(K·N), least squares."""
    pts = [(math.log(r["kn"]), math.log(r[key])) for r in rows if r[key]]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in pts)
    my = statistics.fmean(y for _, y in pts)
    num = sum((x - mx) * (y - my) for x, y in pts)
    return num / sum((x - mx) ** 2 for x, _ in pts)


def fits(rows) -> list[dict]:
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["generator"], r["layer"]), []).append(r)
    out = []
    for (gen, layer), rs in groups.items():
        out.append({"generator": gen, "layer": layer, "points": len(rs),
                    "lclr_exponent": fit_exponent(rs),
                    "floor_exponent": fit_exponent(rs, "floor_s")})  # fmt: skip
    return out


def _fmt(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _pct(v) -> str:
    return "–" if v is None else f"{v:.0%}"


def markdown(rows, fitted) -> str:
    head = (
        "| generator | layer | K | N | lclr s | floor s | lclr/floor | "
        "plain s | plain/lclr | loss share | MiB lclr / floor / plain |"
    )
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        mem = " / ".join(_fmt(r[f"{m}_mib"], 4) for m in ("lclr", "floor", "plain"))
        lines.append(
            f"| {r['generator']} | {r['layer']} | {r['k']} | {r['n']} | "
            f"{_fmt(r['lclr_s'])} | {_fmt(r['floor_s'])} | {_fmt(r['ratio'])} | "
            f"{_fmt(r['plain_s'])} | {_fmt(r['plain_over_lclr'])} | "
            f"{_pct(r['loss_share'])} | {mem} |"
        )
    lines += ["", "| generator | layer | points | exponent lclr | exponent floor |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for f in fitted:
        lines.append(
            f"| {f['generator']} | {f['layer']} | {f['points']} | "
            f"{_fmt(f['lclr_exponent'])} | {_fmt(f['floor_exponent'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--generator", default="embedded", help="embedded, or port256 (random)"
    )
    parser.add_argument("--style-dim", type=int, default=512, help="of portSIZE")
    parser.add_argument("--layer", default=None)
    parser.add_argument("-k", type=int, default=32)
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--sweep", action="store_true", help="the documented sweep")
    parser.add_argument("--full", action="store_true", help="the sweep untrimmed")
    parser.add_argument("--only", help="sweep only this generator (embedded, ...)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--chunk-size", type=int, help="the trainer's option")
    parser.add_argument("--max-memory", type=float, help="the trainer's option")
    parser.add_argument("--compile", action="store_true", help="the trainer's")
    parser.add_argument("--autocast", action=argparse.BooleanOptionalAction,
                        help="the trainer's (default: on for CUDA)")  # fmt: skip
    parser.add_argument("--channels-last", action="store_true", help="the trainer's")
    parser.add_argument(
        "--plan-memory", type=float, metavar="GIB", help="estimate memory; no run"
    )
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    args = parser.parse_args(argv)
    for name in filter(None, (args.generator, args.only)):
        size = name.removeprefix("port")
        if name != "embedded" and not (size.isdigit() and int(size) > 0):
            parser.error(f"unknown generator {name!r}; use embedded or portSIZE")
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    if args.plan_memory is not None:
        if not args.plan_memory > 0:
            parser.error(f"--plan-memory must be > 0 GiB, got {args.plan_memory}")
        with tempfile.TemporaryDirectory() as tmp:
            plan_memory(args, weights_for(args.generator, Path(tmp), args.style_dim))
        return
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.sweep:
            sweep = FULL if args.full else SWEEP
            plan = [s for s in sweep if not args.only or s[0] == args.only]
        else:
            plan = [(args.generator, [args.layer], [(args.k, args.n)], args.repeats)]
        weights = {}
        for gen, layers, points, repeats in plan:
            if gen not in weights:
                weights[gen] = weights_for(gen, folder, args.style_dim)
            args.repeats = repeats if args.sweep else args.repeats
            for layer in layers:
                for k, n in points:
                    row = run_point(gen, weights[gen], layer, k, n, args, folder)
                    rows.append(row)
                    write(args, rows, started)  # so far, in case it is cut short
                    print(f"{gen} {row['layer']} K={k} N={n}: "
                          f"lclr {_fmt(row['lclr_s'])}s "
                          f"floor {_fmt(row['floor_s'])}s "
                          f"ratio {_fmt(row['ratio'])} "
                          f"plain {_fmt(row['plain_s'])}s "
                          f"loss {_pct(row['loss_share'])}", flush=True)  # fmt: skip
    table, minutes = write(args, rows, started)
    print()
    print(table)
    print(f"{len(rows)} points in {minutes:.1f} min, {args.threads} threads, "
          f"torch {torch.__version__}")  # fmt: skip


def write(args, rows, started) -> tuple[str, float]:
    """The tables, written to --markdown and --json when asked."""
    fitted = fits(rows)
    table = markdown(rows, fitted)
    minutes = (time.perf_counter() - started) / 60
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")
    if args.json:
        data = {"rows": rows, "fits": fitted, "minutes": minutes,
                "torch": torch.__version__, "argv": sys.argv[1:]}  # fmt: skip
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return table, minutes


if __name__ == "__main__":
    run_main(main)
