"""The procedural shapes renderer: ranges, determinism, anti-aliasing."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import shapes_factors as _factors

from lclr_shapes.render import (
    FACTORS,
    SHAPES,
    factor_names,
    render,
    stream,
)


def _one(shape: int = 0, **kw: float) -> dict[str, torch.Tensor]:
    values = {
        "x": 0.0,
        "y": 0.0,
        "scale": 0.6,
        "rotation": 0.3,
        "hue": 0.1,
        "background": 0.2,
    }
    values.update(kw)
    out = {k: torch.tensor([v]) for k, v in values.items()}
    out["shape"] = torch.tensor([shape])
    return out


def test_at_least_four_shapes_and_all_factors():
    assert len(SHAPES) >= 4
    assert factor_names() == [
        "shape",
        "x",
        "y",
        "scale",
        "rotation",
        "hue",
        "background",
    ]


def test_factors_lie_in_their_ranges():
    f = _factors(4000)
    for spec in FACTORS:
        v = f[spec.name]
        assert v.shape == (4000,)
        if spec.kind == "categorical":
            assert v.dtype == torch.long
            assert set(v.tolist()) == set(range(len(SHAPES)))
        else:
            assert float(v.min()) >= spec.low
            assert float(v.max()) <= spec.high
            # spread over the whole range
            assert float(v.min()) < spec.low + 0.02 * spec.span
            assert float(v.max()) > spec.high - 0.02 * spec.span


def test_factors_roughly_uniform_and_independent():
    f = _factors(20000, seed=3)
    counts = torch.bincount(f["shape"], minlength=len(SHAPES)).double()
    assert (counts / counts.sum() - 1 / len(SHAPES)).abs().max() < 0.02
    names = [s.name for s in FACTORS if s.kind != "categorical"]
    cols = []
    for name in names:
        spec = next(s for s in FACTORS if s.name == name)
        u = (f[name] - spec.low) / spec.span
        # each tenth holds about a tenth of the samples
        hist = torch.histc(u, bins=10, min=0.0, max=1.0) / u.numel()
        assert (hist - 0.1).abs().max() < 0.015
        cols.append(u)
    cols.append(f["shape"].double())
    corr = torch.corrcoef(torch.stack(cols).double())
    off = corr - torch.eye(len(cols), dtype=corr.dtype)
    assert off.abs().max() < 0.05


def test_sampling_is_deterministic_and_ignores_global_rng():
    torch.manual_seed(1)
    a = _factors(16, seed=7)
    torch.manual_seed(2)
    b = _factors(16, seed=7)
    for name in a:
        assert torch.equal(a[name], b[name])
    c = _factors(16, seed=8)
    assert not torch.equal(a["x"], c["x"])


def test_stream_is_deterministic():
    s1, s2 = stream(8, seed=5), stream(8, seed=5)
    for _ in range(3):
        (i1, f1), (i2, f2) = next(s1), next(s2)
        assert torch.equal(i1, i2)
        assert torch.equal(f1["rotation"], f2["rotation"])
    i3, _ = next(stream(8, seed=6))
    assert not torch.equal(i1, i3)


@pytest.mark.parametrize("size", [8, 32, 64, 128])
def test_render_shape_and_range(size):
    images = render(_factors(6), size)
    assert images.shape == (6, 3, size, size)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0.0
    assert float(images.max()) <= 1.0


def test_render_rejects_bad_size():
    with pytest.raises(ValueError):
        render(_factors(2), 256)


def test_object_is_visible_against_background():
    images = render(_factors(256), 32)
    # the background is the corner pixel; the object differs a lot somewhere
    corner = images[:, :, :1, :1]
    diff = (images - corner).abs().amax(dim=1)  # (N, 32, 32)
    assert float(diff.amax(dim=(1, 2)).min()) > 0.5
    # large enough to show its outline: at least 5 % of the image
    area = (diff > 0.25).float().mean(dim=(1, 2))
    assert float(area.min()) > 0.05


def test_small_shift_changes_pixels_smoothly():
    base = render(_one(x=0.0), 32)
    tiny = render(_one(x=0.02), 32)  # a sixth of a pixel
    delta = (tiny - base).abs()
    assert float(delta.sum()) > 0.5
    # anti-aliased: no pixel jumps by the full contrast
    assert float(delta.max()) < 0.5


def test_every_factor_changes_the_image():
    base = render(_one(), 32)
    for name, value in [
        ("x", 0.1),
        ("y", 0.1),
        ("scale", 0.7),
        ("rotation", 0.6),
        ("hue", 0.3),
        ("background", 0.3),
    ]:
        other = render(_one(**{name: value}), 32)
        assert float((other - base).abs().sum()) > 1.0, name
    for shape in range(1, len(SHAPES)):
        other = render(_one(shape=shape), 32)
        assert float((other - base).abs().sum()) > 5.0


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_no_rotational_symmetry(shape):
    base = render(_one(shape=shape, rotation=0.0), 64)
    for turns in (1, 2, 3, 4, 5):
        angle = 2 * math.pi * turns / 6
        other = render(_one(shape=shape, rotation=angle), 64)
        assert float((other - base).abs().mean()) > 0.01, (shape, turns)
    full = render(_one(shape=shape, rotation=2 * math.pi), 64)
    assert torch.allclose(full, base, atol=1e-4)


def test_render_on_factors_device_and_batch_independent():
    f = _factors(10)
    whole = render(f, 32)
    part = render({k: v[3:5] for k, v in f.items()}, 32)
    assert torch.allclose(whole[3:5], part, atol=1e-6)
