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
    GRID_COLUMNS,
    frechet_distance,
    measure_quality,
    rerender_error,
    sample_source,
    write_error_grid,
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


def test_good_share_by_shape_points_at_the_shape_that_fails():
    # Noise is read as "arrow" (confidently) and is never good: mixed with
    # real renders, only the arrows' good share drops, by the noise's weight.
    torch.set_num_threads(1)
    predictor = load_predictor()
    real, _ = sample_source("real", 200, seed=3)
    noise, _ = sample_source("noise", 200, seed=3)
    report = measure_quality(torch.cat([real, noise]), predictor, refine_steps=20)
    by_class = report["good"]["by_class"]
    read = predictor.predict(torch.cat([real, noise]))["shape"]
    arrows = int((read == 0).sum())
    real_arrows = int((predictor.predict(real)["shape"] == 0).sum())
    assert by_class["arrow"] == pytest.approx(real_arrows / arrows, abs=0.02)
    assert by_class["arrow"] < 0.3
    for name in ("ell", "heart", "crescent"):
        assert by_class[name] > 0.95, name


def test_error_grid_orders_each_shape_by_error(tmp_path):
    import numpy
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 8, 8, generator=gen)
    renders = torch.zeros(5, 3, 8, 8)
    errors = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7])
    shapes_read = torch.tensor([0, 0, 0, 0, 2])
    path = write_error_grid(
        tmp_path / "g.png", images, renders, errors, shapes_read, cols=6, zoom=1
    )
    with Image.open(path) as image:
        pixels = torch.from_numpy(numpy.array(image)).float()  # (H, W, 3)
    # 4 shapes x (samples, re-renders) rows of 8 px, 6 columns, 1 px gaps,
    # after a margin of row labels (the shape's name, "re-render")
    margin = pixels.shape[1] - (6 * 9 + 1)
    assert pixels.shape[0] == 8 * 9 + 1 and margin > 20
    labels = pixels[:, :margin]
    assert labels.min() < 128 and labels[:, :3].min() == 255  # text, inset

    def cell(row, col):
        top, left = 1 + row * 9, margin + 1 + col * 9
        return pixels[top : top + 8, left : left + 8].permute(2, 0, 1) / 255

    for col, i in enumerate([1, 3, 0, 2]):  # shape 0, lowest error first
        assert torch.allclose(cell(0, col), images[i], atol=1 / 255)
        assert torch.allclose(cell(1, col), renders[i])
    assert torch.all(cell(0, 4) == 1)  # padding is white
    assert torch.allclose(cell(4, 0), images[4], atol=1 / 255)  # shape 2's row
    assert torch.all(cell(2, 0) == 1)  # no sample read as shape 1


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


def test_quality_command_writes_the_error_grid(tmp_path):
    from PIL import Image

    out = tmp_path / "sub" / "grid.png"
    result = CliRunner().invoke(
        shapes, ["quality", "--source", "real", "-n", "100", "--grid", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"grid          {out}" in result.output and "by shape" in result.output
    with Image.open(out) as image:  # 12 columns, 4 shapes x 2 rows, zoom 3
        # and a margin of row labels, narrower than a column
        width, height = image.size
        assert height == 3 * (8 * 33 + 1)
        assert 0 < width - 3 * (GRID_COLUMNS * 33 + 1) < 3 * 33


@pytest.mark.parametrize(
    "args",
    [
        ["quality", "--grid", "{tmp}/g.xyz"],
        ["quality", "--grid", "{tmp}/g"],
        ["quality", "--grid", "{tmp}/same.png", "--json", "{tmp}/same.png"],
        ["quality", "--grid", "{tmp}/afile/g.png"],
        ["quality", "--json", "{tmp}/afile/q.json"],
        ["preview", "--out", "{tmp}/p.jpg"],
    ],
)
def test_image_and_report_paths_are_checked_before_any_work(
    tmp_path, args, monkeypatch
):
    # Found in review: a --grid name PIL cannot write, or a path under a
    # file, failed after the whole measurement, with a traceback and no
    # report. Now each is one line before anything is sampled.
    import lclr_shapes.quality

    def measured(*a, **k):
        raise AssertionError("measured before the paths were checked")

    monkeypatch.setattr(lclr_shapes.quality, "quality_of_source", measured)
    (tmp_path / "afile").write_text("not a folder")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(shapes, argv)
    assert result.exit_code != 0
    assert not isinstance(result.exception, AssertionError), result.exception
    assert (tmp_path / "afile").read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "real", "--weights", "nope.pt"], "--weights is for a generator"),
        (["--truncation", "0.3"], "--truncation is for --generator biggan"),
    ],
)
def test_options_that_would_be_ignored_are_refused(args, message):
    # Found in review: both were accepted and had no effect.
    result = CliRunner().invoke(shapes, ["quality", *args])
    assert result.exit_code != 0
    assert message in str(result.exception)


def test_a_shape_no_sample_is_read_as_has_no_good_share():
    # Found in review: noise is read as one shape only, and the other three
    # printed a good share of 0.0 % instead of none.
    from lclr_shapes.quality import provenance_summary, summary_lines

    torch.set_num_threads(1)
    images, _ = sample_source("noise", 100, seed=5)
    report = measure_quality(images, load_predictor(), seed=5, refine_steps=0)
    report["seed"] = 5
    by_class = report["good"]["by_class"]
    assert by_class["arrow"] == 0.0
    assert by_class["ell"] is by_class["heart"] is by_class["crescent"] is None
    assert "ell n/a" in "\n".join(summary_lines(report))
    assert provenance_summary(report)["good_share_by_class"]["ell"] is None


def test_quality_command_exits_1_when_the_source_fails(tmp_path):
    # Noise fails the bar: the report is printed and written, the status is 1.
    out = tmp_path / "noise.json"
    result = CliRunner().invoke(
        shapes, ["quality", "--source", "noise", "-n", "100", "--json", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and json.loads(out.read_text())["pass"] is False
