"""NVIDIA's StyleGAN2 generators (stylegan2-ada-pytorch, stylegan3) as ours.

The input is what :mod:`.safe_pickle` made of a network pickle: a
:class:`~.safe_pickle.PersistentObject` tree. Everything is read from its
data: module attributes (``z_dim``, ``conv_clamp``, ``bias_gain``...) and
tensors (``mapping.fc0.weight``, ``synthesis.b8.conv0.noise_const``...).

The correspondence, NVIDIA -> ours (L: the per-layer code index):

- ``mapping.embed`` -> ``embed``; ``mapping.fc{i}`` -> ``style.{i+1}``;
  ``mapping.w_avg`` -> the average w.
- ``synthesis.b4.const`` (C, 4, 4) -> ``input.input`` (1, C, 4, 4).
- ``b4.conv1`` -> ``conv1``; ``b{R}.conv0``/``conv1`` -> ``convs.{2j}``/
  ``convs.{2j+1}`` (R = 2^(j+3)); ``b4.torgb`` -> ``to_rgb1``, ``b{R}.torgb``
  -> ``to_rgbs.{j}``. Within a layer: ``affine`` -> ``conv.modulation``,
  ``weight`` (O, I, k, k) -> ``conv.weight`` (1, O, I, k, k), ``bias`` ->
  ``activate.bias`` (to-RGB: ``bias`` (1, 3, 1, 1)), ``noise_strength`` ->
  ``noise.weight``, ``noise_const`` -> ``noises.noise_{n}``.

The weights are used as they are, the upsampling convolutions included
(unlike TensorFlow's, NVIDIA's PyTorch transposed convolution already
matches ours).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lclr.errors import CheckpointError

from .model import MAX_TAPS, StyleGAN2, make_kernel
from .safe_pickle import PersistentObject

STANDARD_FILTER = (1, 3, 3, 1)


def find_generator(data: Any, where: str) -> PersistentObject:
    """The ``G_ema`` of a pickle's dict (or the pickle itself if a network)."""
    if isinstance(data, dict):
        for key in ("G_ema", "G"):
            if isinstance(data.get(key), PersistentObject):
                return data[key]
        found = ", ".join(sorted(map(str, data))[:6]) or "nothing"
        raise CheckpointError(
            f"'{where}' is a pickle without a generator 'G_ema' (found: {found});"
            " pass a StyleGAN2 network pickle"
        )
    if isinstance(data, PersistentObject):
        return data
    raise CheckpointError(
        f"'{where}' is a pickle of a {type(data).__name__}, not a network; "
        "pass a StyleGAN2 network pickle"
    )


def is_stylegan3(G: PersistentObject) -> bool:
    """Alias-free generators have ``synthesis.input`` and layers ``L0_...``."""
    syn = G.child("synthesis")
    if syn is None:
        return False
    names = syn.children()
    return "input" in names or any(n.startswith("L0_") for n in names)


class _Reader:
    """Reads tensors and attributes, naming the key in every error."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"'{self.where}': {what}; pass a StyleGAN2 pickle")

    def child(self, obj: PersistentObject, path: str) -> PersistentObject:
        for part in path.split("."):
            nxt = obj.child(part)
            if nxt is None:
                raise self.fail(f"the generator has no module {path}")
            obj = nxt
        return obj

    def tensor(self, obj: PersistentObject, name: str, key: str, shape=None):
        t = obj.tensor(name)
        if t is None:
            raise self.fail(f"{key} is missing")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise CheckpointError(
                f"'{self.where}': shape mismatch {key}: the file has "
                f"{tuple(t.shape)}, the architecture needs {tuple(shape)}"
            )
        return t.detach().to(torch.float32).clone()

    def number(self, obj: PersistentObject, name: str, key: str) -> float:
        value = obj.attr(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{key}.{name} is not a number")
        if not math.isfinite(value) or abs(value) > 2**20:
            raise self.fail(f"{key}.{name} is out of range: {value}")
        return float(value)


def _taps(rd: _Reader, filters: list[torch.Tensor]) -> tuple[float, ...]:
    """The taps of the one FIR filter all layers share.

    NVIDIA stores it normalised, as taps (8 or more) or as their outer
    product; ours is made from taps, so any other filter is refused.
    """
    first = filters[0]
    if any(f.shape != first.shape or not torch.equal(f, first) for f in filters):
        raise rd.fail("its layers use different resampling filters")
    if first.ndim not in (1, 2) or not 1 <= first.shape[0] <= MAX_TAPS:
        raise rd.fail(f"its resampling filter {tuple(first.shape)} is not supported")
    taps = first if first.ndim == 1 else first.sum(dim=1)
    rebuilt = make_kernel(taps.tolist())
    if first.ndim == 1:
        rebuilt = rebuilt.sum(dim=1)
    standard = make_kernel(STANDARD_FILTER)
    if first.shape == standard.shape and torch.allclose(first, standard, atol=1e-6):
        return STANDARD_FILTER
    if not torch.allclose(first, rebuilt, rtol=1e-5, atol=1e-7):
        raise rd.fail("its resampling filter is not separable and normalised")
    return tuple(float(t) for t in taps)


def convert(G: PersistentObject, where: str):
    """``(arch, state_dict, w_avg or None)`` for one of NVIDIA's generators.

    The state dict has every learnt tensor and noise buffer of
    :class:`StyleGAN2` built from ``arch``; its FIR kernel buffers are left
    to the model (they follow from ``arch["blur_kernel"]``).

    Raises :class:`CheckpointError` for anything that is not a StyleGAN2
    generator this model can represent exactly.
    """
    rd = _Reader(where)
    if G.class_name != "Generator":
        raise CheckpointError(
            f"'{where}': its network is a {G.class_name}, not a generator; "
            "pass a StyleGAN2 generator pickle"
        )
    if is_stylegan3(G):
        raise CheckpointError(
            f"'{where}' holds a StyleGAN3 (alias-free) generator, not a "
            "StyleGAN2; lclr's stylegan2 plugin reads StyleGAN2 pickles only"
        )
    mapping, syn = rd.child(G, "mapping"), rd.child(G, "synthesis")
    arch = _architecture(rd, mapping, syn)
    try:
        with torch.device("meta"):  # shapes only
            model = StyleGAN2(**arch)
    except ValueError as e:
        raise rd.fail(f"cannot build its StyleGAN2: {e}") from None
    own = {k: v.shape for k, v in model.state_dict().items()}
    sd: dict[str, torch.Tensor] = {}  # the FIR kernels are the model's own
    _mapping_weights(rd, mapping, model, own, sd)
    _synthesis_weights(rd, syn, model, own, sd)
    w_avg = mapping.tensor("w_avg")
    if w_avg is not None:
        w_avg = rd.tensor(mapping, "w_avg", "mapping.w_avg", (model.style_dim,))
    return arch, sd, w_avg


def _architecture(rd: _Reader, mapping, syn) -> dict[str, Any]:
    """Our constructor arguments, from the modules' attributes and shapes."""
    res = int(rd.number(syn, "img_resolution", "synthesis"))
    if rd.number(syn, "img_channels", "synthesis") != 3:
        raise rd.fail("the generator does not make RGB images")
    log2 = int(math.log2(res)) if res > 0 else 0
    if res < 8 or 2**log2 != res:
        raise rd.fail(f"resolution {res} is not a power of two >= 8")
    channels, clamps, filters = {}, set(), []
    for r in (2**i for i in range(2, log2 + 1)):
        block = rd.child(syn, f"b{r}")
        if block.attr("architecture", "skip") != "skip":
            raise rd.fail(
                f"synthesis architecture '{block.attr('architecture')}' is not "
                "supported (only 'skip', the StyleGAN2 default)"
            )
        for name in ("conv0", "conv1", "torgb") if r > 4 else ("conv1", "torgb"):
            layer = rd.child(block, name)
            clamps.add(layer.attr("conv_clamp"))
            if name != "torgb" and layer.attr("activation", "lrelu") != "lrelu":
                raise rd.fail(f"b{r}.{name} does not use leaky ReLU")
        weight = rd.child(block, "conv1").tensor("weight")
        if weight is None or weight.ndim != 4:
            raise rd.fail(f"synthesis.b{r}.conv1.weight is missing")
        channels[r] = int(weight.shape[0])
        # the skip upsampling and conv0's upsampling (conv1's is unused)
        for owner in (block, block.child("conv0")):
            filt = None if owner is None else owner.tensor("resample_filter")
            if r > 4 and filt is not None:
                filters.append(filt.float())
    if len(clamps) != 1:
        raise rd.fail("its layers use different conv_clamp values")
    clamp = clamps.pop()
    if clamp is not None and not isinstance(clamp, (int, float)):
        raise rd.fail("conv_clamp is not a number")

    z_dim = int(rd.number(mapping, "z_dim", "mapping"))
    c_dim = int(rd.number(mapping, "c_dim", "mapping"))
    w_dim = int(rd.number(mapping, "w_dim", "mapping"))
    n_mlp = int(rd.number(mapping, "num_layers", "mapping"))
    if z_dim < 1 or n_mlp < 1:
        raise rd.fail("a mapping network without z input or layers")
    gains = set()
    for i in range(n_mlp):
        fc = rd.child(mapping, f"fc{i}")
        gains.add(rd.number(fc, "bias_gain", f"mapping.fc{i}"))
        if fc.attr("activation") != "lrelu":
            raise rd.fail(f"mapping.fc{i} does not use leaky ReLU")
    if len(gains) != 1:
        raise rd.fail("its mapping layers use different lr_multiplier values")
    arch: dict[str, Any] = {
        "size": res,
        "style_dim": w_dim,
        "n_mlp": n_mlp,
        "channels": channels,
        "c_dim": c_dim,
        "lr_mlp": gains.pop(),
        "conv_clamp": None if clamp is None else float(clamp),
        "z_dim": z_dim,
        "blur_kernel": _taps(rd, filters) if filters else STANDARD_FILTER,
    }
    if c_dim > 0:
        embed = mapping.child("embed")
        weight = None if embed is None else embed.tensor("weight")
        if weight is None:
            raise rd.fail("mapping.embed.weight is missing")
        arch["embed_dim"] = int(weight.shape[0])
    return arch


def _mapping_weights(rd: _Reader, mapping, model: StyleGAN2, own, sd) -> None:
    """``embed`` and ``style.{i+1}`` from ``mapping.embed``/``fc{i}``."""
    pairs = [(f"fc{i}", f"style.{i + 1}") for i in range(model.n_mlp)]
    if model.c_dim > 0:
        pairs.append(("embed", "embed"))
    for src, dst in pairs:
        fc = rd.child(mapping, src)
        for name in ("weight", "bias"):
            key = f"{dst}.{name}"
            sd[key] = rd.tensor(fc, name, f"mapping.{src}.{name}", own[key])


def _layers(log2: int):
    """``(block, layer name, our prefix, noise index or None)`` in order."""
    yield "b4", "conv1", "conv1", 0
    yield "b4", "torgb", "to_rgb1", None
    for j in range(log2 - 2):
        block = f"b{2 ** (j + 3)}"
        yield block, "conv0", f"convs.{2 * j}", 2 * j + 1
        yield block, "conv1", f"convs.{2 * j + 1}", 2 * j + 2
        yield block, "torgb", f"to_rgbs.{j}", None


def _synthesis_weights(rd: _Reader, syn, model: StyleGAN2, own, sd) -> None:
    """The constant, the styled convs, noise and to-RGB layers."""
    b4 = rd.child(syn, "b4")
    sd["input.input"] = rd.tensor(
        b4, "const", "synthesis.b4.const", own["input.input"][1:]
    )[None]
    for block, name, dst, noise in _layers(model.log_size):
        layer = rd.child(syn, f"{block}.{name}")
        src = f"synthesis.{block}.{name}"
        for part in ("weight", "bias"):
            key = f"{dst}.conv.modulation.{part}"
            affine = rd.child(layer, "affine")
            sd[key] = rd.tensor(affine, part, f"{src}.affine.{part}", own[key])
        key = f"{dst}.conv.weight"
        sd[key] = rd.tensor(layer, "weight", f"{src}.weight", own[key][1:])[None]
        if noise is None:  # to-RGB: bias (3,) -> (1, 3, 1, 1)
            key = f"{dst}.bias"
            bias = rd.tensor(layer, "bias", f"{src}.bias", (own[key][1],))
            sd[key] = bias.view(own[key])
            continue
        key = f"{dst}.activate.bias"
        sd[key] = rd.tensor(layer, "bias", f"{src}.bias", own[key])
        nkey = f"noises.noise_{noise}"
        if layer.attr("use_noise", True):
            strength = rd.tensor(layer, "noise_strength", f"{src}.noise_strength", ())
            sd[f"{dst}.noise.weight"] = strength.view(1)
            const = rd.tensor(layer, "noise_const", f"{src}.noise_const", own[nkey][2:])
            sd[nkey] = const.view(own[nkey])
        else:
            sd[f"{dst}.noise.weight"] = torch.zeros(1)
            sd[nkey] = torch.zeros(own[nkey])
