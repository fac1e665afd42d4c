"""The shapes quality bar and the ``lclr shapes`` commands."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import shapes_factors as _factors

from lclr.errors import ConfigError
from lclr_shapes.plugin import shapes
from lclr_shapes.predictor import load_predictor
from lclr_shapes.quality import (
    ERROR_BOUND,
    frechet_distance,
    measure_quality,
    rerender_error,
    sample_source,
)
from lclr_shapes.render import render


def test_frechet_distance():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 8, generator=gen)
    b = torch.randn(2000, 8, generator=gen)
    assert frechet_distance(a, b) < 0.1
    shifted = b + torch.tensor([2.0] + [0.0] * 7)
    assert frechet_distance(a, shifted) == pytest.approx(4.0, rel=0.1)
    assert frechet_distance(a, 3.0 * b) > 10.0


def test_rerender_error_separates_renders_from_blends():
    torch.set_num_threads(1)
    f = _factors(64)
    images = render(f, 32)
    assert float(rerender_error(images, f, refine_steps=0).max()) < 1e-4
    # a rough guess is pulled back onto the image by the refinement
    rough = dict(f)
    rough["x"] = f["x"] + 0.02
    rough["rotation"] = f["rotation"] + 0.1
    err = rerender_error(images, rough, refine_steps=40)
    assert float((err <= ERROR_BOUND).double().mean()) > 0.95
    other = render(_factors(64, seed=1), 32)
    blend = 0.5 * (images + other)
    err = rerender_error(blend, f, refine_steps=40)
    assert float((err <= ERROR_BOUND).double().mean()) < 0.1


def test_sample_source():
    for source in ("real", "noise", "blend"):
        images, asked = sample_source(source, 5, seed=0)
        assert images.shape == (5, 3, 32, 32) and asked is None
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    with pytest.raises(ConfigError, match="unknown source"):
        sample_source("gan", 5, seed=0)


def _tiny_stylegan2(path):
    from lclr_stylegan2.loading import save_checkpoint
    from lclr_stylegan2.model import StyleGAN2

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = StyleGAN2(
            32, style_dim=16, n_mlp=1, channels={r: 8 for r in (4, 8, 16, 32)}, c_dim=4
        )
    save_checkpoint(
        path, model, meta={"class_names": ["ell", "arrow", "heart", "crescent"]}
    )


def test_stylegan2_source_is_class_conditional(tmp_path):
    _tiny_stylegan2(tmp_path / "g.pt")
    images, asked = sample_source("stylegan2", 12, seed=0, weights=tmp_path / "g.pt")
    assert images.shape == (12, 3, 32, 32)
    assert asked is not None and asked.shape == (12,)
    # class 0 of the file is "ell", which is index 1 of SHAPES
    assert set(asked.tolist()) <= {0, 1, 2, 3}


def test_real_passes_noise_and_blends_fail():
    torch.set_num_threads(1)
    predictor = load_predictor()
    real, _ = sample_source("real", 300, seed=5)
    report = measure_quality(real, predictor, seed=5)
    assert report["good"]["share"] > 0.95
    assert report["classes"]["pass"] and report["coverage"]["pass"]
    assert report["frechet"]["pass"] and report["pass"]
    for source in ("noise", "blend"):
        images, _ = sample_source(source, 300, seed=5)
        report = measure_quality(images, predictor, seed=5, refine_steps=20)
        assert report["good"]["share"] < 0.1, source
        assert not report["pass"]


def test_preview_command(tmp_path):
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(
        shapes, ["preview", "--out", str(out), "--rows", "2", "--cols", "3"]
    )
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (2 * (3 * 33 + 1), 2 * (2 * 33 + 1))


def test_quality_command_writes_json(tmp_path):
    out = tmp_path / "q.json"
    result = CliRunner().invoke(
        shapes, ["quality", "--source", "real", "-n", "100", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "overall" in result.output
    report = json.loads(out.read_text())
    assert report["source"] == "real" and report["n"] == 100


def test_quality_command_exits_1_when_the_source_fails(tmp_path):
    # Noise fails the bar: the report is printed and written, the status is 1.
    out = tmp_path / "noise.json"
    result = CliRunner().invoke(
        shapes, ["quality", "--source", "noise", "-n", "100", "--json", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and json.loads(out.read_text())["pass"] is False
