"""The shapes evaluator, on a fake run whose generator renders factors read
straight from the code vector, so the true answer is known."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lclr_shapes.evaluator import (
    FACTOR_NAMES,
    ShapesEvaluator,
    factor_changes,
    score_matrix,
)
from lclr_shapes.options import ShapesEvalOptions
from lclr_shapes.render import FACTORS, SHAPES, render

DIM = 8  # one code entry per factor, and one that does nothing


class FakeGenerator:
    """Code entry i drives factor i: shape from a sigmoid in quarters,
    linear factors through a sigmoid, angles and hue linearly."""

    latent_dim = DIM
    num_codes = 1

    def sample_latent(self, n, seed=None):
        gen = torch.Generator().manual_seed(seed or 0)
        return torch.randn(n, DIM, generator=gen)

    def synthesize(self, codes):
        factors = {}
        for i, spec in enumerate(FACTORS):
            c = codes[:, i]
            if spec.kind == "categorical":
                u = torch.sigmoid(c)
                factors[spec.name] = (u * len(SHAPES)).long().clamp(max=3)
            elif spec.kind == "linear":
                factors[spec.name] = spec.low + spec.span * torch.sigmoid(c)
            else:
                turn = torch.remainder(c / 4.0, 1.0)  # a quarter turn per unit
                factors[spec.name] = spec.low + spec.span * turn
        return render(factors, 32)


class FakeDirections:
    """Fixed directions: codes + alpha * unit vector k."""

    def __init__(self, units):
        self.units = units / units.norm(dim=1, keepdim=True)
        self.k = units.shape[0]

    def edit(self, codes, k, alpha):
        return codes + alpha * self.units[k]


class FakeRun:
    """What the evaluator uses of lclr.load_run's result."""

    def __init__(self, units, alpha=1.0):
        self.generator = FakeGenerator()
        self.directions = FakeDirections(units)
        self.config = type("Config", (), {"alpha": alpha})()

    def edit(self, codes, k, alpha):
        return self.directions.edit(codes, k, alpha)


def _axes(*indices):
    return torch.eye(DIM)[list(indices)]


def test_score_matrix_extremes():
    f = len(FACTOR_NAMES)
    perfect = 0.5 * torch.eye(f)
    assert score_matrix(perfect)["score"] == pytest.approx(1.0)
    same = torch.zeros(f, f)
    same[:, 1] = 0.5  # every direction moves x only
    assert score_matrix(same)["score"] == pytest.approx(1.0 / f)
    mixed = torch.full((f, f), 0.5)
    assert score_matrix(mixed)["score"] == pytest.approx(1.0 / f)
    weak = 0.05 * torch.eye(f)
    assert score_matrix(weak, reference=0.25)["score"] == pytest.approx(0.2)
    nothing = torch.zeros(3, f)
    assert score_matrix(nothing)["score"] == 0.0


def test_factor_changes_units():
    before = {s.name: torch.tensor([s.low]) for s in FACTORS}
    before["shape"] = torch.tensor([0])
    after = dict(before)
    after["shape"] = torch.tensor([2])
    after["x"] = before["x"] + 0.5 * FACTORS[1].span
    after["rotation"] = torch.tensor([1.5 * math.pi])  # a quarter turn back
    after["hue"] = torch.tensor([0.5])  # half a turn
    change = factor_changes(before, after)[0]
    got = dict(zip(FACTOR_NAMES, change.tolist()))
    assert got["shape"] == 1.0
    assert got["x"] == pytest.approx(0.5)
    assert got["rotation"] == pytest.approx(0.5)
    assert got["hue"] == pytest.approx(1.0)
    assert got["y"] == got["scale"] == got["background"] == 0.0


def test_options_validate():
    with pytest.raises(ValueError):
        ShapesEvalOptions(samples=100)
    with pytest.raises(ValueError):
        ShapesEvalOptions(alpha=-1.0)
    with pytest.raises(ValueError):
        ShapesEvalOptions(random_baseline=-1)


def test_one_factor_directions_are_pure_and_beat_random(tmp_path):
    opts = ShapesEvalOptions(samples=256, random_baseline=0)
    # x, hue, rotation, background: one code entry each
    run = FakeRun(_axes(1, 5, 4, 6), alpha=1.0)
    summary = ShapesEvaluator(opts).evaluate(run, tmp_path)
    dominant = [d["dominant"] for d in summary["directions"]]
    assert dominant == ["x", "hue", "rotation", "background"]
    purity = [d["purity"] for d in summary["directions"]]
    assert min(purity) > 0.8, purity
    assert summary["best_direction"]["x"]["direction"] == 0
    # four of seven factors covered well
    assert 0.4 < summary["score"] <= 4 / 7 + 1e-6

    gen = torch.Generator().manual_seed(3)
    random_run = FakeRun(torch.randn(4, DIM, generator=gen), alpha=1.0)
    random_summary = ShapesEvaluator(opts).evaluate(random_run, tmp_path / "r")
    assert random_summary["score"] < summary["score"] - 0.1


def test_outputs_and_random_baseline(tmp_path):
    opts = ShapesEvalOptions(samples=256, random_baseline=1)
    run = FakeRun(_axes(0, 1, 2, 3, 4, 5, 6), alpha=1.5)
    summary = ShapesEvaluator(opts).evaluate(run, tmp_path)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["score"] == pytest.approx(summary["score"])
    assert (tmp_path / "heatmap.png").stat().st_size > 1000
    assert saved["factors"] == FACTOR_NAMES
    assert len(saved["matrix"]) == 7 and len(saved["matrix"][0]) == 7
    assert saved["random_score"] < saved["score"]
    assert 0.0 <= saved["score"] <= 1.0
    assert saved["directions"][0]["dominant"] == "shape"
    assert any("direction" in line for line in saved["lines"])
