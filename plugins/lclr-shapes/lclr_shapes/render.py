"""A procedural world of one coloured shape on a grey background.

Every image is drawn from seven independent factors, each sampled uniformly
over its range (see :data:`FACTORS`):

- ``shape``: which outline, an index into :data:`SHAPES`. None of the
  outlines has a rotational symmetry, so ``rotation`` is identifiable over
  the whole circle.
- ``x``, ``y``: the object's centre, in image coordinates that run from -1
  (left / top edge) to +1 (right / bottom edge).
- ``scale``: the radius of the disc that holds the outline, in the same
  units (the image is 2 units wide).
- ``rotation``: the angle, in radians in ``[0, 2*pi)``, that the outline is
  turned by; positive turns clockwise on screen (rows grow downwards).
- ``hue``: the object's hue in ``[0, 1)`` (0 red, 1/3 green, 2/3 blue); the
  object is drawn at saturation 0.8 and value 1, so its colour is bright and
  at least 0.6 away from the background in one channel.
- ``background``: the grey level of the background in ``[0, 0.4]``: dark,
  so every hue stands out against it.

Rendering evaluates a signed distance to the outline at each pixel centre and
turns it into coverage with a linear ramp one pixel wide, so edges are
anti-aliased and a shift of a fraction of a pixel changes pixel values.
Everything is vectorised over the batch and runs on the factors' device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "FACTORS",
    "SHAPES",
    "FactorSpec",
    "factor_names",
    "into_range",
    "render",
    "sample_factors",
    "stream",
]

SHAPES: tuple[str, ...] = ("arrow", "ell", "heart", "crescent")
"""Names of the shape classes; ``factors["shape"]`` indexes this tuple."""

MAX_SIZE = 128


@dataclass(frozen=True)
class FactorSpec:
    """One factor of variation.

    ``kind`` is ``"categorical"`` (integer classes ``0 .. high - 1``),
    ``"linear"`` (a real interval ``[low, high]``) or ``"circular"`` (an
    angle-like value whose range ``[low, high)`` wraps around).
    """

    name: str
    kind: str
    low: float
    high: float
    doc: str

    @property
    def span(self) -> float:
        """Width of the range (the period, for a circular factor)."""
        return self.high - self.low


FACTORS: tuple[FactorSpec, ...] = (
    FactorSpec("shape", "categorical", 0, len(SHAPES), "index into SHAPES"),
    FactorSpec("x", "linear", -0.25, 0.25, "centre, -1 left to +1 right"),
    FactorSpec("y", "linear", -0.25, 0.25, "centre, -1 top to +1 bottom"),
    FactorSpec("scale", "linear", 0.5, 0.8, "radius of the outline's disc"),
    FactorSpec("rotation", "circular", 0.0, 2 * math.pi, "radians, clockwise"),
    FactorSpec("hue", "circular", 0.0, 1.0, "object hue, 0 red"),
    FactorSpec("background", "linear", 0.0, 0.4, "background grey level"),
)
"""The factors, in the order they are sampled."""


def factor_names() -> list[str]:
    """Names of all factors, ``shape`` first."""
    return [spec.name for spec in FACTORS]


def sample_factors(n: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Draw ``n`` independent, uniform factor sets with ``generator``.

    Returns a dict with ``shape`` as a ``(N,)`` long tensor and every other
    factor as a ``(N,)`` float tensor, on the generator's device.
    """
    device = generator.device
    out: dict[str, Tensor] = {}
    for spec in FACTORS:
        if spec.kind == "categorical":
            out[spec.name] = torch.randint(
                int(spec.low),
                int(spec.high),
                (n,),
                generator=generator,
                device=device,
            )
        else:
            u = torch.rand(n, generator=generator, device=device)
            out[spec.name] = spec.low + spec.span * u
    return out


def into_range(factors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The factors of :data:`FACTORS` (other keys dropped) moved into their
    ranges: linear ones clamped, circular ones wrapped."""
    out = {"shape": factors["shape"]}
    for spec in FACTORS:
        v = factors[spec.name]
        if spec.kind == "linear":
            out[spec.name] = v.clamp(spec.low, spec.high)
        elif spec.kind == "circular":
            out[spec.name] = spec.low + torch.remainder(v - spec.low, spec.span)
    return out


# Signed distances in the outline's own frame ------------------------------
# Each takes local coordinates u (right) and v (down) in units of ``scale``,
# so every outline fits in the unit disc, and returns a signed distance in
# the same units: negative inside. Boolean combinations use min / max, which
# keeps the zero set exact and the distance exact near most of the edge.


def _root(sq: Tensor) -> Tensor:
    # square root with a finite gradient at 0 (the renderer is differentiated)
    return torch.sqrt(sq.clamp(min=1e-12))


def _box(u: Tensor, v: Tensor, cu: float, cv: float, hu: float, hv: float) -> Tensor:
    du = (u - cu).abs() - hu
    dv = (v - cv).abs() - hv
    outside = _root(du.clamp(min=0) ** 2 + dv.clamp(min=0) ** 2)
    inside = torch.maximum(du, dv).clamp(max=0)
    return outside + inside


def _disc(u: Tensor, v: Tensor, cu: float, cv: float, r: float) -> Tensor:
    return _root((u - cu) ** 2 + (v - cv) ** 2) - r


def _half_plane(u: Tensor, v: Tensor, nu: float, nv: float, c: float) -> Tensor:
    # distance to the line nu*u + nv*v = c, positive on the normal's side
    norm = math.hypot(nu, nv)
    return (nu * u + nv * v - c) / norm


def _arrow(u: Tensor, v: Tensor) -> Tensor:
    # points right (+u): a triangular head and a shaft
    tip, base, half = 0.95, 0.05, 0.7
    head = torch.maximum(
        _half_plane(u, v, -1.0, 0.0, -base),
        torch.maximum(
            _half_plane(u, v, half, tip - base, half * tip),
            _half_plane(u, v, half, -(tip - base), half * tip),
        ),
    )
    shaft = _box(u, v, -0.42, 0.0, 0.5, 0.24)
    return torch.minimum(head, shaft)


def _ell(u: Tensor, v: Tensor) -> Tensor:
    # an upright bar with a foot to the right
    upright = _box(u, v, -0.35, 0.0, 0.26, 0.75)
    foot = _box(u, v, 0.0, 0.49, 0.61, 0.26)
    return torch.minimum(upright, foot)


def _heart(u: Tensor, v: Tensor) -> Tensor:
    # two lobes on top (-v), a point at the bottom (+v); the point's sides
    # are tangent to the lobes
    # Known flaw: at u = 0 the point's top edge (v = -0.05) barely overlaps
    # the lobes' lower edge (v = -0.035), so both distances are near 0 there
    # and every heart has a half-covered dot inside. Fixing it changes the
    # world the predictor and both shipped generators were trained on.
    lobes = torch.minimum(_disc(u, v, -0.4, -0.3, 0.48), _disc(u, v, 0.4, -0.3, 0.48))
    d = 0.5 * math.sqrt(2.0)
    point = torch.maximum(
        _half_plane(u, v, d, d, 0.551),
        torch.maximum(
            _half_plane(u, v, -d, d, 0.551), _half_plane(u, v, 0.0, -1.0, 0.05)
        ),
    )
    return torch.minimum(lobes, point)


def _crescent(u: Tensor, v: Tensor) -> Tensor:
    # a disc with a bite taken from its right side; horns point right
    outer = _disc(u, v, 0.0, 0.0, 0.9)
    bite = _disc(u, v, 0.45, 0.0, 0.72)
    return torch.maximum(outer, -bite)


_SDFS = (_arrow, _ell, _heart, _crescent)


def _hsv_to_rgb(h: Tensor, s: float, v: float) -> Tensor:
    """``(N,)`` hues in ``[0, 1)`` to ``(N, 3)`` RGB at fixed s and v."""
    k = torch.tensor([5.0, 3.0, 1.0], device=h.device, dtype=h.dtype)
    k = torch.remainder(k + 6.0 * h[:, None], 6.0)  # (N, 3)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return v - v * s * ramp


def render(factors: dict[str, Tensor], size: int = 32) -> Tensor:
    """Draw one image per factor set: ``(N, 3, size, size)`` in ``[0, 1]``.

    ``factors`` holds ``(N,)`` tensors named as in :data:`FACTORS` (extra
    keys are ignored). ``size`` is the side in pixels, 4 to 128.
    """
    if not 4 <= size <= MAX_SIZE:
        raise ValueError(f"size must be between 4 and {MAX_SIZE}, got {size}")
    shape = factors["shape"].long()
    x = factors["x"].float()
    device = x.device
    y = factors["y"].to(device).float()
    scale = factors["scale"].to(device).float()
    rot = factors["rotation"].to(device).float()
    hue = factors["hue"].to(device).float()
    grey = factors["background"].to(device).float()
    shape = shape.to(device)
    n = x.shape[0]

    # pixel centres in [-1, 1]: (size,)
    pix = 2.0 / size
    axis = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * pix - 1.0
    gx = axis.view(1, 1, size)
    gy = axis.view(1, size, 1)

    # into the outline's frame: translate, rotate back, divide by scale
    dx = gx - x.view(n, 1, 1)  # (N, 1, S)
    dy = gy - y.view(n, 1, 1)  # (N, S, 1)
    cos = torch.cos(rot).view(n, 1, 1)
    sin = torch.sin(rot).view(n, 1, 1)
    s = scale.view(n, 1, 1)
    u = (cos * dx + sin * dy) / s  # (N, S, S)
    v = (-sin * dx + cos * dy) / s

    # signed distance of the drawn shape, in pixels: (N, S, S)
    dist = torch.zeros_like(u)
    for index, sdf in enumerate(_SDFS):
        mask = shape == index
        if bool(mask.any()):
            d = sdf(u[mask], v[mask])
            dist[mask] = d * s[mask] / pix
    coverage = (0.5 - dist).clamp(0.0, 1.0).unsqueeze(1)  # (N, 1, S, S)

    colour = _hsv_to_rgb(hue, 0.8, 1.0).view(n, 3, 1, 1)
    back = grey.view(n, 1, 1, 1)
    return back + coverage * (colour - back)  # (N, 3, S, S)


def stream(
    batch_size: int,
    seed: int,
    size: int = 32,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """An endless iterator of ``(images, factors)`` batches.

    The sequence depends only on ``seed`` (and ``device``): it draws from its
    own ``torch.Generator``, never from the global RNG state.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    while True:
        factors = sample_factors(batch_size, gen)
        yield render(factors, size), factors
