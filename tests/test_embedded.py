"""The embedded default: the shapes StyleGAN2 that `lclr run` uses with no
weights given, end to end for a few steps."""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import lclr
from lclr.cli import cli
from lclr_shapes.render import SHAPES
from lclr_stylegan2.loading import EMBEDDED_WEIGHTS

pytestmark = pytest.mark.usefixtures("fresh_registry")
ROOT = Path(__file__).resolve().parents[1]


def test_embedded_weights_are_small_and_documented():
    assert EMBEDDED_WEIGHTS.stat().st_size <= 10 * 2**20
    facts = json.loads(EMBEDDED_WEIGHTS.with_suffix(".json").read_text())
    assert facts["seed"] == 0 and facts["steps"] > 0 and facts["minutes"] > 0


def test_embedded_generator_is_the_class_conditional_shapes_one():
    g = lclr.create_generator("stylegan2")
    assert g.describe()["class_names"] == list(SHAPES)
    images = g.synthesize(g.sample_latent(4, seed=0))
    assert images.shape == (4, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1
    heart = lclr.create_generator("stylegan2", class_label="heart")
    assert heart.sample_latent(2, seed=0).shape == (2, g.latent_dim)


def test_the_readme_run_command_on_the_embedded_generator(tmp_path):
    out = tmp_path / "run"
    args = ["-q", "run", "--generator", "stylegan2", "--iterations", "3", "-k", "3",
            "--batch-size", "4", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (out / "images" / "grid.png").exists()
    result = CliRunner().invoke(cli, ["eval", str(out), "-E", "samples=256"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval" / "eval.json").read_text())
    assert 0 <= report["score"] <= 1


def test_baseline_benchmark_runs_for_a_few_steps(tmp_path, monkeypatch, capsys):
    argv = ["shapes_baseline.py", "--out", str(tmp_path), "--directions",
            "global,ganspace,sefa", "--seeds", "0", "--iterations", "2", "-k", "2",
            "--threads", "1", "--random-sets", "2"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "benchmarks" / "shapes_baseline.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert all(f"| {name} |" in out for name in ("global", "ganspace", "sefa"))
    rows = json.loads((tmp_path / "baseline.json").read_text())
    assert len(rows[0]["random_scores"]) == 2
    assert [r["direction"] for r in rows] == ["global", "ganspace", "sefa"]


@pytest.mark.parametrize("arch", ["stylegan2", "biggan"])
def test_capacity_benchmark_fits_the_generator_to_renders(
    tmp_path, monkeypatch, capsys, arch
):
    small = (
        ["--channels32", "8"]
        if arch == "stylegan2"
        else ["--biggan-width", "4", "--z-dim", "8", "--biggan-attention", "-1",
              "--biggan-blocks", "16-8,8-4u,4-2u,2-1u"]
    )  # fmt: skip
    argv = ["gan_capacity.py", "--arch", arch, "--steps", "12", "--every", "6",
            "--batch-size", "4", "--score-samples", "20", *small,
            "--out", str(tmp_path / "cap.json"),
            "--grid", str(tmp_path / "cap.png")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    bench = runpy.run_path(str(ROOT / "benchmarks" / "gan_capacity.py"))
    bench["main"]()
    rows = json.loads((tmp_path / "cap.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [6, 12]
    assert set(rows[0]["by_shape"]) == set(SHAPES)
    assert all(0 <= r["good"] <= 1 and r["l1"] > 0 for r in rows)
    assert capsys.readouterr().out.count('"step"') == 2
    assert (tmp_path / "cap.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args",
    [["--out", "{tmp}"], ["--out", "{tmp}/afile/x.json"], ["--grid", "{tmp}/g.jpg"],
     ["--threads", "0"], ["--lr", "nan"], ["--channels32", "0"],
     ["--score-samples", "1"], ["--biggan-width", "8"],
     ["--arch", "biggan", "--channels32", "8"], ["--biggan-blocks", "16-8"],
     ["--biggan-attention", "2"], ["--z-dim", "0"],
     ["--arch", "biggan", "--biggan-blocks", "16-8x"],
     ["--arch", "biggan", "--biggan-blocks", "16-8,8-2u"]],
)  # fmt: skip
def test_capacity_benchmark_checks_its_arguments_before_training(
    tmp_path, monkeypatch, capsys, args
):
    # Found in review: bad output paths failed after all the training, with
    # a traceback, and bad numbers were tracebacks or silently ignored.
    (tmp_path / "afile").write_text("kept")
    argv = ["gan_capacity.py", *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    monkeypatch.setattr(sys, "argv", argv)
    bench = runpy.run_path(str(ROOT / "benchmarks" / "gan_capacity.py"))
    with pytest.raises(SystemExit) as exc:
        bench["main"]()
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("gan_capacity")
    assert (tmp_path / "afile").read_text() == "kept"


def test_capacity_benchmark_codes_every_factor_in_a_unit_range():
    bench = runpy.run_path(str(ROOT / "benchmarks" / "gan_capacity.py"))
    import torch

    from lclr_shapes.render import sample_factors

    code = bench["factor_code"](sample_factors(2000, torch.Generator().manual_seed(0)))
    assert code.shape == (2000, bench["CODE_SIZE"])
    assert code.abs().max() <= 1.0 + 1e-6
    assert (code.abs().amax(dim=0) > 0.9).all()  # each one spans its range


def test_step_speed_benchmark_compares_the_trainer_with_the_floor(
    tmp_path, monkeypatch, capsys
):
    argv = ["step_speed.py", "--generator", "port16", "--style-dim", "32",
            "--layer", "convs.1", "-k", "2", "-n", "2", "--repeats", "1",
            "--threads", "1", "--json", str(tmp_path / "r.json"),
            "--markdown", str(tmp_path / "r.md")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "benchmarks" / "step_speed.py"), run_name="__main__")
    assert "| port16 | convs.1 | 2 | 2 |" in capsys.readouterr().out
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    for method in ("lclr", "floor", "plain", "loss"):
        assert row[f"{method}_s"] > 0
    assert row["ratio"] == pytest.approx(row["lclr_s"] / row["floor_s"])
    assert "lclr/floor" in (tmp_path / "r.md").read_text()


def test_step_speed_fits_the_exponent_of_step_cost():
    bench = runpy.run_path(str(ROOT / "benchmarks" / "step_speed.py"))
    rows = [{"kn": kn, "lclr_s": 0.5 * kn**1.25} for kn in (32, 128, 3200)]
    assert bench["fit_exponent"](rows) == pytest.approx(1.25)


def test_a_relative_weights_path_is_recorded_absolute(tmp_path, monkeypatch):
    # Found by trying it: a run made with `--weights w/shapes.pt` recorded
    # the path as typed and could not be loaded from another folder.
    import shutil

    (tmp_path / "w").mkdir()
    shutil.copy(EMBEDDED_WEIGHTS, tmp_path / "w" / "shapes.pt")
    monkeypatch.chdir(tmp_path)
    args = ["-q", "run", "--weights", "w/shapes.pt", "--iterations", "1", "-k", "2",
            "--batch-size", "2", "--no-render", "--out", "run"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["weights"]
    assert recorded == str(tmp_path / "w" / "shapes.pt")
    monkeypatch.chdir(tmp_path / "w")
    assert lclr.load_run(tmp_path / "run").generator is not None


def test_recorded_quality_is_what_the_quality_command_measures():
    # The provenance beside the embedded weights states its quality figures;
    # they must be the ones `lclr shapes quality` gives today (n=1000, seed 0).
    from lclr_shapes.quality import quality_of_source

    recorded = json.loads(EMBEDDED_WEIGHTS.with_suffix(".json").read_text())["quality"]
    report = quality_of_source("stylegan2", n=1000, seed=0)
    assert report["pass"] == recorded["passes"]
    assert report["good"]["share"] == pytest.approx(recorded["good_share"], abs=0.01)
    for name, share in report["classes"]["shares"].items():
        assert share == pytest.approx(recorded["class_shares"][name], abs=0.01)
    for name, share in report["good"]["by_class"].items():
        assert share == pytest.approx(recorded["good_share_by_class"][name], abs=0.01)
    assert report["frechet"]["samples"] == pytest.approx(
        recorded["frechet"]["samples"], rel=0.05
    )


@pytest.mark.parametrize("what", ["predictor", "stylegan2", "biggan"])
def test_loading_weights_leaves_the_global_random_stream_alone(what):
    # Building a network before its weights are loaded drew from the global
    # stream, so loading (the GAN recipe's monitor loads the predictor after
    # a resume restored that stream) changed every random draw after it.
    from lclr_biggan.generator import load_generator
    from lclr_shapes.predictor import load_predictor
    from lclr_stylegan2.loading import load_checkpoint

    load = {
        "predictor": load_predictor,
        "stylegan2": lambda: load_checkpoint(EMBEDDED_WEIGHTS),
        "biggan": lambda: load_generator(None),
    }[what]
    torch.manual_seed(0)
    before = torch.get_rng_state()
    load()
    assert torch.equal(torch.get_rng_state(), before)
