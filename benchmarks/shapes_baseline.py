"""LatentCLR against random directions, GANSpace and SeFa on the embedded
shapes generator.

Trains one run per direction model and seed (``ganspace`` and ``sefa`` are
fitted in closed form instead, from the same seed), scores each with the
``shapes`` evaluator (which also scores K random directions of the same
norm on the same samples), and prints a table. The figures in docs/shapes.md come from

    .venv/bin/python benchmarks/shapes_baseline.py --out build/baseline

It takes about a minute per run and seed on two CPU cores at the defaults.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

import lclr
from lclr import runfolder
from lclr.config import RunConfig
from lclr.errors import ConfigError
from lclr.scripts import ArgumentParser, positive_int, run_main


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/baseline"))
    parser.add_argument("--directions", default="global,linear,nonlinear,ganspace,sefa")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--layer", default=None)
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--generator", default="stylegan2", help="stylegan2 or biggan")
    parser.add_argument(
        "-G",
        dest="generator_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a generator option, e.g. -G class_label=square (repeatable)",
    )
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument(
        "--random-sets", type=int, default=5, help="sets of K random directions"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(
            f"--seeds takes whole numbers, comma-separated, got {args.seeds!r}"
        )
    options = {}
    for item in args.generator_options:
        key, eq, value = item.partition("=")
        if not (key and eq):
            parser.error(f"-G takes KEY=VALUE, got {item!r}")
        options[key] = value
    rows = []
    for direction in args.directions.split(","):
        for seed in seeds:
            folder = args.out / f"{direction}-seed{seed}"
            config = RunConfig(
                generator=args.generator, weights=args.weights,
                generator_options=options, layer=args.layer, direction=direction,
                k=args.k, alpha=args.alpha, batch_size=args.batch_size,
                iterations=args.iterations, seed=seed,
            )  # fmt: skip
            start = time.perf_counter()
            if (folder / "directions.json").exists():
                _check_same_run(folder, config)
                print(f"{folder} exists: evaluating it as it is")
            else:
                lclr.train(config, folder)
            minutes = (time.perf_counter() - start) / 60
            # each seed its own samples, for LatentCLR and random alike
            evaluator = lclr.create_evaluator(
                "shapes",
                samples=args.samples,
                seed=seed,
                random_baseline=args.random_sets,
            )
            summary = evaluator.evaluate(lclr.load_run(folder), folder / "eval")
            rows.append(
                {
                    "direction": direction,
                    "seed": seed,
                    "score": summary["score"],
                    "random": _random_score(summary),
                    "random_scores": summary.get("random_scores", []),
                    "minutes": round(minutes, 2),
                }
            )
            print(json.dumps(rows[-1]))

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "baseline.json").write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(table(rows, args))


def _check_same_run(folder: Path, config: RunConfig) -> None:
    """Refuse to score a run left in ``folder`` by other settings (found by
    review: a run of another --layer or --weights was scored as this one)."""
    saved = runfolder.read_config(folder)
    if saved == config:
        return
    new, old = config.to_dict(), saved.to_dict()
    differ = [key for key in new if new[key] != old.get(key)]
    raise ConfigError(
        f"{folder} holds a run with other settings ({', '.join(differ)}); "
        "remove it or choose another --out"
    )


def _random_score(summary: dict) -> float:
    return float(summary.get("random_score", float("nan")))


def table(rows: list[dict], args) -> str:
    lines = [
        f"K={args.k}, alpha={args.alpha}, N={args.batch_size}, "
        f"{args.iterations} iterations, layer {args.layer or 'default'}, "
        f"generator {args.generator} {' '.join(args.generator_options)}".rstrip(),
        "",
        "| direction model | score (mean ± sd) | random directions "
        "(mean ± sd over sets) | seeds |",
        "| --- | --- | --- | --- |",
    ]
    for direction in dict.fromkeys(r["direction"] for r in rows):
        mine = [r["score"] for r in rows if r["direction"] == direction]
        # the same sets of random directions for every direction model
        rand = [
            x
            for r in rows
            if r["direction"] == rows[0]["direction"]
            for x in r.get("random_scores") or [r["random"]]
        ]
        sd = statistics.stdev(mine) if len(mine) > 1 else 0.0
        rsd = statistics.stdev(rand) if len(rand) > 1 else 0.0
        lines.append(
            f"| {direction} | {statistics.mean(mine):.3f} ± {sd:.3f} | "
            f"{statistics.mean(rand):.3f} ± {rsd:.3f} | {len(mine)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
