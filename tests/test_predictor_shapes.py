"""The shapes factor predictor: targets, R² on the circle, weights files."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import shapes_factors as _factors

from lclr.errors import CheckpointError
from lclr_shapes.predictor import (
    FEATURE_DIM,
    FactorPredictor,
    decode,
    encode_targets,
    evaluate_predictor,
    load_predictor,
    r2_scores,
    save_predictor,
    train_predictor,
)
from lclr_shapes.render import SHAPES, render


def test_targets_round_trip():
    f = _factors(64)
    back = decode(encode_targets(f))
    for name, value in back.items():
        assert torch.allclose(value, f[name], atol=1e-5), name


def test_r2_perfect_and_wrapped():
    f = _factors(500)
    assert all(v == pytest.approx(1.0) for v in r2_scores(f, f).values())
    shifted = dict(f)
    # a full turn off is no error for a circular factor
    shifted["rotation"] = f["rotation"] + 2 * math.pi
    shifted["hue"] = f["hue"] - 1.0
    r2 = r2_scores(shifted, f)
    assert r2["rotation"] == pytest.approx(1.0)
    assert r2["hue"] == pytest.approx(1.0)
    # a constant guess scores about 0
    flat = {
        k: torch.full_like(v.float(), float(v.float().mean())) for k, v in f.items()
    }
    assert r2_scores(flat, f)["x"] == pytest.approx(0.0, abs=1e-6)
    assert r2_scores(flat, f)["rotation"] < 0.05


def test_forward_shapes_and_resize():
    model = FactorPredictor(width=4).eval()
    for size in (32, 64):
        out = model.predict(render(_factors(3), size))
        assert out["probs"].shape == (3, len(SHAPES))
        assert out["features"].shape == (3, FEATURE_DIM)
        assert torch.allclose(out["probs"].sum(1), torch.ones(3))
        assert out["rotation"].min() >= 0 and out["rotation"].max() < 2 * math.pi


def test_short_training_and_round_trip(tmp_path):
    torch.set_num_threads(1)
    model = train_predictor(steps=3, batch_size=8, width=4, log_every=1)
    path = tmp_path / "p.pt"
    save_predictor(model, path, {"note": "test"})
    blob = torch.load(path, weights_only=True)
    assert blob["meta"]["width"] == 4
    loaded = load_predictor(path)
    images = render(_factors(4), 32)
    a, b = model.predict(images), loaded.predict(images)
    assert torch.allclose(a["probs"], b["probs"], atol=1e-6)


def test_bad_weights_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no predictor weights"):
        load_predictor(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a shapes predictor"):
        load_predictor(junk)
    torch.save({"state": {}, "meta": {"width": 16}}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError):
        load_predictor(tmp_path / "empty.pt")


def test_shipped_predictor_is_accurate():
    torch.set_num_threads(1)
    figures = evaluate_predictor(load_predictor(), n=1000, seed=123)
    assert figures["class_accuracy"] >= 0.98
    for name, value in figures["r2"].items():
        assert value >= 0.95, name


def test_train_predictor_refuses_to_overwrite_before_training(tmp_path):
    # Found in review: the command trained for minutes, then silently
    # replaced whatever file --out named.
    from click.testing import CliRunner

    from lclr.cli import cli

    out = tmp_path / "mine.pt"
    out.write_bytes(b"precious")
    result = CliRunner().invoke(
        cli, ["shapes", "train-predictor", "--out", str(out), "--steps", "1"]
    )
    assert result.exit_code != 0 and "--force" in result.output
    assert out.read_bytes() == b"precious"
