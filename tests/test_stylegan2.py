"""Tests of the StyleGAN2 plugin on tiny random networks (32-64 px)."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch
import torch.nn.functional as F

from lclr.errors import CheckpointError, ConfigError, UnknownComponentError
from lclr.interfaces import weights_sha256
from lclr_stylegan2 import loading
from lclr_stylegan2.generator import StyleGAN2Generator, load_generator
from lclr_stylegan2.loading import (
    build,
    infer_architecture,
    load_checkpoint,
    save_checkpoint,
)
from lclr_stylegan2.model import StyleGAN2
from lclr_stylegan2.plugin import StyleGAN2Options, create_stylegan2

TINY = {4: 32, 8: 32, 16: 16, 32: 8}


def tiny(c_dim=0, size=32, seed=0):
    """A small random StyleGAN2 whose noise and biases all matter."""
    torch.manual_seed(seed)
    channels = {**TINY, 64: 8}
    model = StyleGAN2(size, style_dim=16, n_mlp=2, channels=channels, c_dim=c_dim)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("noise.weight", "activate.bias", "rgb1.bias")):
                p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture
def model():
    return tiny()


@pytest.fixture
def gen(model):
    return StyleGAN2Generator(model, model.mean_latent(64))


@pytest.fixture
def ckpt(tmp_path, model):
    return save_checkpoint(tmp_path / "g.pt", model, model.mean_latent(64))


# The network -----------------------------------------------------------------


@pytest.mark.parametrize("conv", ["convs.0.conv", "convs.1.conv", "to_rgbs.1.conv"])
def test_activation_scaling_equals_grouped_weights(model, conv):
    mod = model.get_submodule(conv)
    x = torch.randn(3, mod.in_channel, 8, 8)
    w = torch.randn(3, 16)
    fast, ref = mod(x, w), mod.forward_grouped(x, w)
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_state_dict_layout(model):
    sd = model.state_dict()
    assert sd["style.1.weight"].shape == (16, 16)
    assert sd["conv1.conv.weight"].shape == (1, 32, 32, 3, 3)
    assert sd["convs.0.conv.blur.kernel"].shape == (4, 4)
    assert sd["to_rgbs.0.upsample.kernel"].shape == (4, 4)
    assert sd["to_rgbs.2.bias"].shape == (1, 3, 1, 1)
    assert sd["noises.noise_6"].shape == (1, 1, 32, 32)
    assert model.n_latent == 8 and "embed.weight" not in sd


def test_conditional_mapping():
    model = tiny(c_dim=4)
    sd = model.state_dict()
    assert sd["embed.weight"].shape == (16, 4)
    assert sd["style.1.weight"].shape == (16, 32)
    z = torch.randn(4, 16)
    c = F.one_hot(torch.arange(4), 4).float()

    def norm(x):
        return x / x.pow(2).mean(1, keepdim=True).add(1e-8).sqrt()

    x = torch.cat([norm(z), norm(model.embed(c))], dim=1)
    torch.testing.assert_close(model.mapping(z, c), model.style[1:](x))
    w = model.mapping(z[:1].expand(4, -1), c)
    assert (w[0] - w[1]).abs().max() > 1e-3  # the class changes w
    with pytest.raises(ValueError):
        model.mapping(z)
    assert model(z, c).shape == (4, 3, 32, 32)


def test_truncation_zero_gives_latent_avg(model):
    avg = model.mean_latent(64)
    z = torch.randn(2, 16)
    img = model(z, truncation=0.0, truncation_latent=avg)
    torch.testing.assert_close(img, model.synthesis(avg.expand(2, -1)))


def test_noise_modes(model):
    w = torch.randn(2, 16)
    const = model.synthesis(w)
    torch.testing.assert_close(const, model.synthesis(w, noise_mode="const"))
    assert not torch.allclose(const, model.synthesis(w, noise_mode="none"))
    r1, r2 = (model.synthesis(w, noise_mode="random") for _ in range(2))
    assert not torch.allclose(r1, r2)


# The lclr generator ----------------------------------------------------------


def test_layers_and_shapes(gen):
    assert gen.layers() == ["conv1"] + [f"convs.{i}" for i in range(6)]
    assert gen.num_codes == 8 and gen.latent_dim == 16 and gen.space == "w"
    codes = gen.sample_latent(2, seed=0)
    for layer in gen.layers():
        assert gen.features(codes, layer).shape[1:] == gen.layer_shape(layer)
    assert gen.code_layers()[1] == "to_rgb1+convs.0"
    assert gen.code_layers()[-1] == "to_rgbs.2"
    with pytest.raises(UnknownComponentError, match="conv1, convs.0"):
        gen.features(codes, "conv9")


def test_truncated_forward_equals_hooked_full_forward(gen):
    codes = gen.sample_latent(3, seed=1)
    convs = [m for _, m in gen.model.styled_convs()]
    rgbs = [gen.model.to_rgb1, *gen.model.to_rgbs]
    captured = {}
    handles = [
        m.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o))
        for k, m in enumerate(convs)
    ]
    gen.synthesize(codes)
    for h in handles:
        h.remove()
    fired = []
    for index, layer in enumerate(gen.layers()):
        fired.clear()
        later = convs[index + 1 :] + rgbs
        handles = [m.register_forward_hook(lambda *a: fired.append(1)) for m in later]
        out = gen.features(codes, layer)
        for h in handles:
            h.remove()
        assert not fired, f"modules past {layer} ran"
        torch.testing.assert_close(out, captured[index])


def test_w_plus_single_code_equals_repeated(gen):
    codes = gen.sample_latent(2, seed=2)
    plus = codes[:, None].expand(-1, gen.num_codes, -1)
    torch.testing.assert_close(gen.synthesize(codes), gen.synthesize(plus))
    torch.testing.assert_close(
        gen.features(codes, "convs.3"), gen.features(plus, "convs.3")
    )
    mixed = plus.clone()
    mixed[:, 5:] = gen.sample_latent(2, seed=3)[:, None]
    a, b = gen.features(plus, "convs.3"), gen.features(mixed, "convs.3")
    torch.testing.assert_close(a, b)  # code 5 is read after convs.3
    assert not torch.allclose(gen.synthesize(plus), gen.synthesize(mixed))


def test_sampling_is_seeded_and_leaves_global_rng(model):
    gen = StyleGAN2Generator(model, model.mean_latent(64), truncation=0.5)
    state = torch.get_rng_state()
    a = gen.sample_latent(4, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, gen.sample_latent(4, seed=7))
    g = torch.Generator().manual_seed(7)
    torch.testing.assert_close(a, gen.sample_latent(4, generator=g))
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(7))
    w = model.mapping(z)
    torch.testing.assert_close(a, gen.latent_avg + 0.5 * (w - gen.latent_avg))
    assert not a.requires_grad


def test_frozen_and_images_in_unit_range(gen):
    assert not any(p.requires_grad for p in gen.parameters())
    gen.train()
    assert not gen.training and not gen.model.training
    img = gen.synthesize(gen.sample_latent(2, seed=0))
    assert img.shape == (2, 3, 32, 32) and img.min() >= 0 and img.max() <= 1


def test_z_space_maps_inside_with_grad(model):
    avg = model.mean_latent(64)
    gen = StyleGAN2Generator(model, avg, space="z", truncation=0.7)
    z = gen.sample_latent(2, seed=0).requires_grad_()
    feats = gen.features(z, "convs.1")
    feats.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    w = avg + 0.7 * (model.mapping(z) - avg)
    torch.testing.assert_close(feats, model.features(w, 2))


def test_class_labels():
    model = tiny(c_dim=3)
    names = ["circle", "square", "triangle"]
    gen = StyleGAN2Generator(model, class_label="square", class_names=names)
    assert gen.class_index == 1
    assert StyleGAN2Generator(model, class_label="2").class_index == 2
    w = gen.sample_latent(2, seed=0)
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    c = F.one_hot(torch.tensor([1, 1]), 3).float()
    torch.testing.assert_close(w, model.mapping(z, c))
    rand = StyleGAN2Generator(model)  # a random class per sample
    torch.testing.assert_close(rand.sample_latent(5, 1), rand.sample_latent(5, 1))
    with pytest.raises(ConfigError, match="circle, square, triangle"):
        StyleGAN2Generator(model, class_label="hexagon", class_names=names)
    # found in review: a near miss got no suggestion, unlike BigGAN's classes
    with pytest.raises(ConfigError, match="did you mean square\\?"):
        StyleGAN2Generator(model, class_label="sqare", class_names=names)
    # found in review: "Square" or " square" was unknown, and a misspelling
    # in capitals ("SQARE") got no hint
    for label in ("Square", " SQUARE "):
        gen = StyleGAN2Generator(model, class_label=label, class_names=names)
        assert gen.class_index == 1
    with pytest.raises(ConfigError, match="did you mean square\\?"):
        StyleGAN2Generator(model, class_label="SQARE", class_names=names)
    with pytest.raises(ConfigError, match="class_label"):
        StyleGAN2Generator(model, space="z")
    with pytest.raises(ConfigError, match="unconditional; drop class_label"):
        StyleGAN2Generator(tiny(), class_label=0)


# Checkpoints -----------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    model = tiny(c_dim=3)
    avg = model.mean_latent(64)
    path = save_checkpoint(
        tmp_path / "sub" / "g.pt", model, avg, {"class_names": ["a", "b", "c"]}
    )
    assert [p.name for p in path.parent.iterdir()] == ["g.pt"]  # no temp left
    loaded = load_checkpoint(path)
    sd = loaded.model.state_dict()
    assert sd.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k
    torch.testing.assert_close(loaded.latent_avg, avg)
    assert loaded.meta["class_names"] == ["a", "b", "c"]
    gen = load_generator(path, class_label="b")
    assert gen.class_names == ["a", "b", "c"] and gen.class_index == 1


def test_bare_state_dict_and_training_checkpoint(tmp_path, model):
    sd = model.state_dict()
    torch.save(sd, tmp_path / "bare.pt")
    assert load_checkpoint(tmp_path / "bare.pt").latent_avg is None
    args = argparse.Namespace(size=32, channel_multiplier=2)
    torch.save({"g": sd, "g_ema": sd, "args": args}, tmp_path / "train.pt")
    loaded = load_checkpoint(tmp_path / "train.pt")
    assert torch.equal(loaded.model.input.input, model.input.input)
    gen = load_generator(tmp_path / "bare.pt")  # mean latent from seed 0
    again = load_generator(tmp_path / "bare.pt")
    torch.testing.assert_close(gen.latent_avg, again.latent_avg)


def test_port_training_snapshot(tmp_path, model, caplog):
    # What the port's train.py saves: g, d, g_ema, optimiser states, args.
    g_optim = torch.optim.Adam(model.parameters(), lr=0.002, betas=(0.0, 0.99))
    model(torch.randn(2, 16)).mean().backward()
    g_optim.step()
    d = torch.nn.Linear(4, 1)
    d_optim = torch.optim.Adam(d.parameters())
    args = argparse.Namespace(size=32, n_mlp=2, latent=16, path="lmdb", r1=10.0)
    snap = {
        "g": model.state_dict(),
        "d": d.state_dict(),
        "g_ema": model.state_dict(),
        "g_optim": g_optim.state_dict(),
        "d_optim": d_optim.state_dict(),
        "args": args,
    }
    torch.save(snap, tmp_path / "010000.pt")
    with caplog.at_level("WARNING", logger="lclr"):
        gen = load_generator(tmp_path / "010000.pt")
    assert "no average w (latent_avg); estimated" in caplog.text
    expected = model.mean_latent(4096, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gen.latent_avg, expected)
    codes = gen.sample_latent(2, seed=0)
    torch.testing.assert_close(
        gen.synthesize(codes), load_generator(tmp_path / "010000.pt").synthesize(codes)
    )


def test_lclr_format_round_trip(tmp_path):
    model = StyleGAN2(16, style_dim=8, n_mlp=3, channels=TINY, c_dim=2,
                      conv_clamp=0.5, z_dim=6, embed_dim=4).eval()  # fmt: skip
    avg = model.mean_latent(16)
    path = loading.save_generator(tmp_path / "g.safetensors", model, avg,
                                  {"class_names": ["x", "y"]})  # fmt: skip
    loaded = load_checkpoint(path)
    assert loading.architecture(loaded.model) == loading.architecture(model)
    assert loaded.model.conv_clamp == 0.5 and loaded.model.z_dim == 6
    assert loaded.meta["class_names"] == ["x", "y"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    assert torch.equal(loaded.latent_avg, avg)
    from safetensors.torch import save_file

    save_file(dict(model.state_dict()), tmp_path / "bare.safetensors")
    bare = load_checkpoint(tmp_path / "bare.safetensors", arch={"conv_clamp": 0.5})
    w = torch.randn(2, 8)
    assert torch.equal(bare.model.synthesis(w), model.synthesis(w))
    save_file({"x": torch.zeros(2)}, tmp_path / "o.safetensors", {"format": "pt"})
    with pytest.raises(CheckpointError, match="safetensors file of 'pt'"):
        load_checkpoint(tmp_path / "o.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.safetensors")


def test_malformed_lclr_metadata_is_one_line(tmp_path, model):
    from safetensors.torch import save_file

    header = {"format": "lclr-stylegan2", "format_version": "1"}
    arch = json.dumps(loading.architecture(model))
    cases = {
        "arch-string": {"arch": '"hello"', "meta": "{}"},
        "arch-list": {"arch": "[1, 2]", "meta": "{}"},
        "no-size": {"arch": '{"style_dim": 16}', "meta": "{}"},
        "bad-size": {"arch": '{"size": "big"}', "meta": "{}"},
        "bad-channels": {"arch": '{"size": 32, "channels": [4]}', "meta": "{}"},
        "negative": {"arch": '{"size": 32, "style_dim": -5}', "meta": "{}"},
        "meta-list": {"arch": arch, "meta": "[1, 2]"},
        "class-names-int": {"arch": arch, "meta": '{"class_names": 5}'},
        "class-names-objects": {"arch": arch, "meta": '{"class_names": [{}]}'},
    }
    for name, extra in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(dict(model.state_dict()), path, metadata={**header, **extra})
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value), name
    meta = {"arch": loading.architecture(model), "class_names": 3}
    torch.save({"g_ema": model.state_dict(), "lclr_meta": meta}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="malformed lclr metadata"):
        load_checkpoint(tmp_path / "m.pt")


def test_damaged_or_oversized_tensors_are_refused(tmp_path, model):
    # Each would have asked for terabytes: a 10^5-channel conv weight viewing
    # one float, and an architecture of 10^6 channels stated in metadata.
    from safetensors.torch import save_file

    sd = dict(model.state_dict())
    sd["convs.0.conv.weight"] = torch.zeros(1).expand(1, 10**5, 10**5, 3, 3)
    torch.save({"g_ema": sd}, tmp_path / "views.pt")
    with pytest.raises(CheckpointError, match="refused.*far more than the file"):
        load_checkpoint(tmp_path / "views.pt")
    arch = {**loading.architecture(model), "channels": {"4": 10**6}}
    meta = {"format": "lclr-stylegan2", "arch": json.dumps(arch)}
    save_file({"latent_avg": torch.zeros(16)}, tmp_path / "a.safetensors", meta)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(tmp_path / "a.safetensors")
    sd = dict(model.state_dict())
    sd["convs.2.conv.weight"] = sd["convs.2.conv.weight"].clone()
    sd["convs.2.conv.weight"][0, 0, 0, 0, 0] = float("nan")
    torch.save({"g_ema": sd}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="convs.2.conv.weight holds NaN"):
        load_checkpoint(tmp_path / "nan.pt")
    avg = torch.full((16,), float("inf"))
    torch.save({"g_ema": model.state_dict(), "latent_avg": avg}, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match="latent_avg holds NaN"):
        load_checkpoint(tmp_path / "inf.pt")
    for kwargs in ({"size": 8192}, {"blur_kernel": [1] * 17}, {"channels": {8: 0}}):
        with torch.device("meta"), pytest.raises(ValueError):
            StyleGAN2(**{"size": 32, "style_dim": 16, **kwargs})
    ckpt = save_checkpoint(tmp_path / "g.pt", model)
    with (
        zipfile.ZipFile(ckpt) as src,
        zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(CheckpointError, match="refused.*compressed"):
        load_checkpoint(tmp_path / "deflated.pt")


def test_conv_clamp_clamps_layers_and_rgb():
    torch.manual_seed(0)
    free = StyleGAN2(16, style_dim=8, n_mlp=1, channels=TINY).eval()
    clamped = StyleGAN2(16, style_dim=8, n_mlp=1, channels=TINY, conv_clamp=0.25)
    clamped.load_state_dict(free.state_dict())
    w = torch.randn(2, 8)
    for index in range(3):
        assert clamped.features(w, index).abs().max() <= 0.25
        assert free.features(w, index).abs().max() > 0.25
    assert not torch.allclose(free.synthesis(w), clamped.synthesis(w))


def test_missing_noise_drawn_from_seed(tmp_path, model):
    sd = {k: v for k, v in model.state_dict().items() if "noises" not in k}
    torch.save({"g_ema": sd}, tmp_path / "g.pt")
    a = load_checkpoint(tmp_path / "g.pt", noise_seed=1).model.noises.noise_3
    b = load_checkpoint(tmp_path / "g.pt", noise_seed=1).model.noises.noise_3
    c = load_checkpoint(tmp_path / "g.pt", noise_seed=2).model.noises.noise_3
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=32, style_dim=16, n_mlp=2, channels=TINY),
        dict(size=64, style_dim=24, n_mlp=3, channels={4: 16, 64: 4}, c_dim=5),
        dict(size=256, channel_multiplier=2),
        dict(size=512, channel_multiplier=1, c_dim=10),
    ],
)
def test_infer_architecture(kwargs):
    with torch.device("meta"):  # shapes only: no memory, no time
        model = StyleGAN2(**kwargs)
        arch = infer_architecture(model.state_dict())
        rebuilt = build(arch)
    assert arch["size"] == kwargs["size"]
    assert arch["n_mlp"] == kwargs.get("n_mlp", 8)
    assert arch["c_dim"] == kwargs.get("c_dim", 0)
    assert arch["channels"] == model.channels
    shapes = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert shapes == {k: v.shape for k, v in model.state_dict().items()}


def test_standard_256_channels():
    with torch.device("meta"):
        sd = StyleGAN2(256).state_dict()
    assert sd["convs.11.conv.weight"].shape == (1, 128, 128, 3, 3)
    assert sd["to_rgbs.5.conv.weight"].shape == (1, 3, 128, 1, 1)
    assert sd["style.8.weight"].shape == (512, 512) and len(sd) == 135


class Evil:
    """Unpickling this would create a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_refuses_pickled_code(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"g_ema": {"input.input": Evil(marker)}}
    if how == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_errors(tmp_path, model, ckpt):
    data = ckpt.read_bytes()
    cases = {
        "does not exist": tmp_path / "nope.pt",
        "is a folder": tmp_path,
        "not a PyTorch checkpoint": _write(tmp_path / "a.txt", b"hello\n"),
        "truncated or corrupt": _write(tmp_path / "cut.pt", data[: len(data) // 2]),
    }
    with zipfile.ZipFile(tmp_path / "junk.pt", "w") as z:
        z.writestr("junk/data.pkl", os.urandom(64))
    cases["not a PyTorch checkpoint"] = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(1), "step": 3}, tmp_path / "other.pt")
    cases["no 'g_ema'"] = tmp_path / "other.pt"
    torch.save([1, 2], tmp_path / "list.pt")
    cases["holds a list"] = tmp_path / "list.pt"
    sd = model.state_dict()
    del sd["convs.3.activate.bias"]
    torch.save({"g_ema": sd}, tmp_path / "missing.pt")
    cases["missing keys convs.3.activate.bias"] = tmp_path / "missing.pt"
    for needle, path in cases.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        msg = str(info.value)
        assert needle in msg and "\n" not in msg, msg
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_wrong_shapes(tmp_path, model, ckpt):
    with pytest.raises(CheckpointError, match="shape mismatch input.input"):
        load_checkpoint(ckpt, arch={"channel_multiplier": 2})
    with pytest.raises(CheckpointError, match="unexpected keys embed"):
        sd = dict(model.state_dict(), **{"embed.weight": torch.zeros(16, 2)})
        torch.save(
            {"g_ema": sd, "lclr_meta": {"arch": loading.architecture(model)}},
            tmp_path / "x.pt",
        )
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="latent_avg"):
        torch.save(
            {"g_ema": model.state_dict(), "latent_avg": torch.zeros(3)},
            tmp_path / "y.pt",
        )
        load_checkpoint(tmp_path / "y.pt")


def test_embedded_weights_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(
        "lclr_stylegan2.generator.EMBEDDED_WEIGHTS", tmp_path / "gone.pt"
    )
    with pytest.raises(CheckpointError, match="embedded.*--weights"):
        create_stylegan2(None, None)


# The plugin ------------------------------------------------------------------


def test_options_and_factory(ckpt):
    assert StyleGAN2Options().space == "w"
    for bad in (
        dict(truncation=0),
        dict(truncation=1.5),
        dict(space="x"),
        dict(size=48),
    ):
        with pytest.raises(ConfigError):
            StyleGAN2Options(**bad)
    opts = StyleGAN2Options(space="z", truncation=0.5)
    gen = create_stylegan2(ckpt, opts)
    assert gen.space == "z" and gen.truncation == 0.5
    assert gen.describe()["resolution"] == 32


def test_plugin_import_is_light():
    code = "import sys, lclr_stylegan2.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def _a_run_on_its_own_file(tmp_path):
    """A 2-step run in ``tmp_path/run`` on a tiny StyleGAN2 saved at
    ``tmp_path/g.pt``: ``(weights path, run folder)``."""
    from click.testing import CliRunner

    from lclr.cli import cli

    weights = save_checkpoint(tmp_path / "g.pt", tiny(), tiny().mean_latent(64))
    run = tmp_path / "run"
    args = ["-q", "run", "--generator", "stylegan2", "--weights", str(weights)]
    args += ["--layer", "conv1", "-k", "2", "--batch-size", "2", "--no-render"]
    result = CliRunner().invoke(cli, [*args, "--iterations", "2", "--out", str(run)])
    assert result.exit_code == 0, result.output
    return weights, run


def test_a_run_knows_when_its_weights_were_replaced(tmp_path, caplog):
    # lclr render and eval used to draw with whatever file sat at the run's
    # weights path; a replaced file now warns, and a resume is refused.
    import logging

    from click.testing import CliRunner

    from lclr.api import load_run
    from lclr.cli import cli

    weights, run = _a_run_on_its_own_file(tmp_path)
    recorded = json.loads((run / "directions.json").read_text())
    assert recorded["generator_info"]["sha256"] == weights_sha256(weights)
    with caplog.at_level(logging.WARNING, logger="lclr"):
        load_run(run)
    assert not caplog.records  # the same file: nothing to say

    other = tiny(seed=1)
    save_checkpoint(weights, other, other.mean_latent(64))
    with caplog.at_level(logging.WARNING, logger="lclr"):
        load_run(run)
    assert "not those the run was trained on" in caplog.text
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = CliRunner().invoke(
        cli, ["-q", "run", "--resume", str(run), "--iterations", "4"]
    )
    assert result.exit_code == 4
    assert result.output.count("\n") == 1
    assert f"put the run's own file back at {weights}" in result.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_run_goes_on_from_its_weights_moved_elsewhere(tmp_path):
    # found in review: a run whose checkpoint file had moved could not go on,
    # although the digest it recorded tells which file is its own
    from click.testing import CliRunner

    from lclr.cli import cli

    weights, run = _a_run_on_its_own_file(tmp_path)
    moved = weights.rename(tmp_path / "moved.pt")
    other = save_checkpoint(tmp_path / "o.pt", tiny(seed=1), tiny().mean_latent(64))
    resume = ["-q", "run", "--resume", str(run), "--iterations"]

    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = CliRunner().invoke(cli, [*resume, "4", "--weights", str(other)])
    assert result.exit_code == 4 and result.output.count("\n") == 1
    assert f"weights at {other} are not those the run was trained on" in result.output
    assert f"put the run's own file back at {weights}" in result.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before

    result = CliRunner().invoke(cli, [*resume, "4", "--weights", str(moved)])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "directions.json"):
        assert json.loads((run / name).read_text())["weights"] == str(moved)
    # and the run remembers the new place
    result = CliRunner().invoke(cli, [*resume, "5"])
    assert result.exit_code == 0, result.output
    # without the directions file (and its digest) nothing can be checked
    (run / "directions.safetensors").unlink()
    result = CliRunner().invoke(cli, [*resume, "6", "--weights", str(other)])
    assert result.exit_code == 4 and result.output.count("\n") == 1
    assert "has no directions.safetensors yet" in result.output
    assert f"put its file back at {moved} and resume without --weights" in (
        result.output
    )


def test_an_embedded_run_goes_on_with_a_copy_of_its_weights(tmp_path):
    # the embedded file of a plugin upgraded since can be given as a copy
    import shutil

    from click.testing import CliRunner

    from lclr.cli import cli
    from lclr_stylegan2.loading import EMBEDDED_WEIGHTS

    run = tmp_path / "run"
    args = ["-q", "run", "--generator", "stylegan2", "--layer", "conv1", "-k", "2"]
    args += ["--batch-size", "2", "--no-render", "--out", str(run)]
    result = CliRunner().invoke(cli, [*args, "--iterations", "1"])
    assert result.exit_code == 0, result.output
    copy = shutil.copy(EMBEDDED_WEIGHTS, tmp_path / "old.pt")
    resume = ["-q", "run", "--resume", str(run), "--iterations", "2"]
    result = CliRunner().invoke(cli, [*resume, "--weights", str(copy)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["weights"] == str(copy)


def test_replaced_embedded_weights_are_named_as_such(gen):
    from lclr.runfolder import weights_changed

    gen.info["sha256"] = "b" * 64
    meta = {"generator": "stylegan2", "weights": None, "generator_info": {}}
    assert weights_changed(meta, gen) is None  # a run recorded before digests
    meta["generator_info"]["sha256"] = "b" * 64
    assert weights_changed(meta, gen) is None
    meta["generator_info"]["sha256"] = "a" * 64
    message = weights_changed(meta, gen)
    assert message.startswith("the embedded stylegan2 weights have changed")
    assert "bbbbbbbbbbbb, the run's aaaaaaaaaaaa" in message
