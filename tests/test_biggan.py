"""Tests of the BigGAN-deep plugin, against the reference package.

The reference (``pytorch-pretrained-biggan``, a test-only dependency) gets a
small random network with every parameter and statistic set, and u, v made
consistent with W by its own power iterations; its eval-mode images and
every block's activation must equal ours to 1e-5 in float32.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import lclr
from lclr.cli import cli
from lclr.errors import CheckpointError, ConfigError, UnknownComponentError
from lclr_biggan import loading
from lclr_biggan.classes import class_name, imagenet_classes, resolve_class
from lclr_biggan.generator import BigGANGenerator, load_generator, truncated_normal
from lclr_biggan.model import stats_for_truncation

TRUNCATIONS = [0.02, 0.14, 0.4, 0.58, 1.0]
CLASSES = [0, 3, 207, 517, 999]
TOL = 1e-5

SMALL = dict(
    output_dim=32,
    z_dim=8,
    class_embed_dim=8,
    channel_width=4,
    num_classes=1000,
    layers=[(False, 16, 16), (True, 16, 8), (False, 8, 8),
            (True, 8, 4), (True, 4, 2), (False, 2, 1)],
    attention_layer_position=3,
    eps=1e-4,
    n_stats=51,
)  # fmt: skip


def random_reference(seed=0):
    """The reference network on SMALL, every parameter and buffer random."""
    ref_model = importlib.import_module("pytorch_pretrained_biggan.model")
    config = ref_model.BigGANConfig.from_dict(SMALL)
    torch.manual_seed(seed)
    ref = ref_model.BigGAN(config)
    named = [*ref.named_parameters(), *ref.named_buffers()]
    with torch.no_grad():
        for name, t in named:
            if name.endswith("gamma"):  # attention gain, 0 at construction
                t.fill_(0.8)
            elif name == "generator.bn.weight":  # left uninitialised by it
                t.copy_(1 + 0.2 * torch.randn_like(t))
            elif name.endswith("bias"):
                t.copy_(0.1 * torch.randn_like(t))
            elif name.endswith("running_means"):
                t.copy_(0.3 * torch.randn_like(t))
            elif name.endswith("running_vars"):
                t.copy_(0.5 + torch.rand_like(t))
            elif name == "embeddings.weight":
                t.normal_()
        # u, v consistent with W: power iterations, run by its training mode.
        ref.train()
        for _ in range(10):
            ref(torch.randn(2, 8), torch.eye(1000)[:2], 0.5)
    return ref.eval(), config


@pytest.fixture(scope="module")
def reference():
    return random_reference()[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, reference):
    """A weights folder in the reference's layout, written by the reference."""
    folder = tmp_path_factory.mktemp("biggan")
    torch.save(reference.state_dict(), folder / loading.WEIGHTS_NAME)
    text = reference.config.to_json_string()
    (folder / loading.CONFIG_NAME).write_text(text)
    return folder


@pytest.fixture(scope="module")
def ours(weights):
    return loading.load_biggan(weights).model


@contextlib.contextmanager
def hooked(modules):
    """``{index: output}`` filled by forward hooks on ``modules`` meanwhile."""
    seen = {}
    handles = [
        m.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, out))
        for i, m in enumerate(modules)
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (loading.CONFIG_NAME, loading.WEIGHTS_NAME):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


# Parity with the reference ----------------------------------------------------


@pytest.mark.parametrize("truncation", TRUNCATIONS)
def test_images_and_every_layer_match_the_reference(reference, ours, truncation):
    gen = torch.Generator().manual_seed(1)
    z = truncation * truncated_normal((len(CLASSES), 8), gen)
    y = torch.eye(1000)[CLASSES]  # a batch of several classes
    with torch.no_grad(), hooked(reference.generator.layers) as acts:
        want = reference(z, y, truncation)
    with torch.no_grad():
        got = ours(z, y, truncation)
        diffs = {"image": (got - want).abs().max().item()}
        for i in range(len(ours.generator.layers)):
            feat = ours(z, y, truncation, stop=i)
            assert feat.shape == acts[i].shape
            diffs[f"layers.{i}"] = (feat - acts[i]).abs().max().item()
    assert max(diffs.values()) <= TOL, diffs
    assert want.abs().max() > 0.1  # a real image, not a constant


def test_generator_matches_the_reference_for_a_named_class(reference, weights):
    g = lclr.create_generator(
        "biggan", weights=weights, class_label="golden retriever", truncation=0.58
    )
    assert g.class_index == 207 and g.describe()["class_name"] == "golden retriever"
    codes = g.sample_latent(3, seed=4)
    with torch.no_grad(), hooked(reference.generator.layers) as acts:
        want = (reference(codes, torch.eye(1000)[[207] * 3], 0.58) + 1) / 2
    with torch.no_grad():
        assert (g.synthesize(codes) - want.clamp(0, 1)).abs().max() <= TOL
        for i, layer in enumerate(g.layers()):
            assert (g.features(codes, layer) - acts[i]).abs().max() <= TOL, layer


def test_spectral_norm_is_folded_as_in_eval_mode(reference, ours):
    ref_conv = reference.generator.layers[0].conv_1
    with torch.no_grad():
        reference(torch.zeros(1, 8), torch.eye(1000)[:1], 1.0)  # sets .weight
    assert torch.equal(ours.generator.layers[0].conv_1.weight, ref_conv.weight)
    assert not any(p.requires_grad for p in ours.parameters())


def test_the_rgb_conv_is_the_full_conv_cut_to_three_channels_in_training():
    # it computes only the channels kept, also under the training hook
    from torch import nn

    from lclr_biggan.model import RGBConv

    outs, grads = [], []
    x = torch.randn(3, 8, 6, 6)
    for kind in (nn.Conv2d, RGBConv):
        torch.manual_seed(0)
        conv = nn.utils.spectral_norm(kind(8, 8, 3, padding=1))
        xi = x.clone().requires_grad_(True)
        out = conv(xi)[:, :3]  # a no-op cut for RGBConv
        out.square().sum().backward()
        outs.append(out)
        grads.append((xi.grad, conv.weight_orig.grad, conv.weight_u.clone()))
    assert outs[1].shape == (3, 3, 6, 6)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_stored_statistics_keep_the_formats_rounding():
    rows = torch.arange(51.0)[:, None].repeat(1, 2)  # row i holds the value i
    pick = {t: stats_for_truncation(rows, rows, t)[0][0].item() for t in TRUNCATIONS}
    # 0.14 / 0.02 rounds just above 7, 0.58 / 0.02 just below 29; the format
    # weights the lower row by the fraction, landing on rows 8 and 28.
    assert pick[0.14] == pytest.approx(8.0, abs=1e-6)
    assert pick[0.58] == pytest.approx(28.0, abs=1e-6)
    assert pick[1.0] == 50.0 and pick[0.4] == 20.0
    assert stats_for_truncation(rows, rows, 0.25)[0][0].item() == pytest.approx(12.5)


# The generator -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gen(weights):
    return load_generator(weights, class_label=3, truncation=0.4)


def test_layers_codes_and_shapes(gen):
    assert gen.layers() == [f"layers.{i}" for i in range(7)]
    assert gen.num_codes == 7 and gen.space == "z" and gen.latent_dim == 8
    assert gen.code_layers() == ["gen_z", "layers.0", "layers.1", "layers.2",
                                 "layers.4", "layers.5", "layers.6"]  # fmt: skip
    shapes = [gen.layer_shape(name) for name in gen.layers()]
    assert shapes == [(64, 4, 4), (32, 8, 8), (32, 8, 8), (32, 8, 8),
                      (16, 16, 16), (8, 32, 32), (4, 32, 32)]  # fmt: skip
    codes = gen.sample_latent(2, seed=0)
    for name, shape in zip(gen.layers(), shapes):
        assert gen.features(codes, name).shape == (2, *shape)
    assert gen.synthesize(codes).shape == (2, 3, 32, 32)
    with pytest.raises(UnknownComponentError, match="layers.6"):
        gen.layer_shape("conv9")


def test_truncated_forward_is_the_full_forwards_activation(gen):
    modules = gen.model.generator.layers
    codes = gen.sample_latent(3, seed=2)
    feats = [gen.features(codes, name) for name in gen.layers()]
    with hooked(modules) as acts:
        gen.features(codes, "layers.2")
    assert set(acts) == {0, 1, 2}  # nothing past the target block ran
    with hooked(modules) as acts:
        gen.synthesize(codes)
    assert len(acts) == len(feats) == len(modules)
    for i, feat in enumerate(feats):
        assert torch.equal(feat, acts[i])


def test_an_edit_reaches_chosen_blocks_only(gen):
    codes = gen.sample_latent(2, seed=3)
    plus = codes[:, None].repeat(1, gen.num_codes, 1)  # (N, L, D)
    assert torch.equal(gen.synthesize(plus), gen.synthesize(codes))
    edited = plus.clone()
    edited[:, 4] += 1.0  # code 4 is read by layers.4 only
    for name in gen.layers():
        same = torch.equal(gen.features(edited, name), gen.features(plus, name))
        assert same == (name in ("layers.0", "layers.1", "layers.2", "layers.3"))
    with pytest.raises(ValueError, match="codes must be"):
        gen.features(plus[:, :3], "layers.0")


def test_sampling_is_reproducible_and_truncated(gen):
    a = gen.sample_latent(4, seed=7)
    assert torch.equal(a, gen.sample_latent(4, seed=7))
    assert torch.equal(
        a, gen.sample_latent(4, generator=torch.Generator().manual_seed(7))
    )
    assert not torch.equal(a, gen.sample_latent(4, seed=8))
    assert a.abs().max() <= 2 * 0.4


def test_truncated_normal_has_the_references_distribution():
    truncnorm = importlib.import_module("scipy.stats").truncnorm
    x = truncated_normal((20000,), torch.Generator().manual_seed(0)).double()
    assert x.abs().max() <= 2.0
    qs = torch.tensor([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99], dtype=torch.float64)
    want = torch.from_numpy(truncnorm.ppf(qs.numpy(), -2, 2))
    assert (torch.quantile(x, qs) - want).abs().max() < 0.03
    assert x.std().item() == pytest.approx(truncnorm.std(-2, 2), abs=0.01)


def test_no_scipy_at_run_time():
    package = Path(loading.__file__).parent
    assert not any("scipy" in p.read_text() for p in package.glob("*.py"))


# Classes -------------------------------------------------------------------------


def test_class_table_is_imagenets_order():
    table = imagenet_classes()
    assert len(table) == 1000 and class_name(0) == "tench"
    assert class_name(207) == "golden retriever" and class_name(999).startswith(
        "toilet"
    )
    utils = importlib.import_module("pytorch_pretrained_biggan.utils")
    # The reference maps WordNet offsets to indices; our order must agree.
    assert all(utils.IMAGENET[int(wnid[1:])] == i for i, (wnid, _) in enumerate(table))


@pytest.mark.parametrize(
    "label", [207, "207", "golden retriever", "Golden_Retriever", "n02099601"]
)
def test_class_by_index_name_or_wordnet_id(label):
    assert resolve_class(label) == 207


def test_unknown_ambiguous_and_out_of_range_classes():
    with pytest.raises(ConfigError, match=r"close matches: golden retriever \(207\)"):
        resolve_class("golden retreiver")
    with pytest.raises(ConfigError, match=r"ambiguous: crane \(134\), crane \(517\)"):
        resolve_class("crane")
    with pytest.raises(ConfigError, match="out of range"):
        resolve_class(1000)
    with pytest.raises(ConfigError, match="give an index 0-9"):
        resolve_class("tench", num_classes=10)
    with pytest.raises(ConfigError, match="no close match"):
        resolve_class("zzzzqqq")


def test_unknown_class_through_the_registry(weights):
    with pytest.raises(ConfigError, match="unknown ImageNet class 'goldfsh'"):
        lclr.create_generator("biggan", weights=weights, class_label="goldfsh")


# Weights folders and errors -------------------------------------------------------


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("missing", [loading.CONFIG_NAME, loading.WEIGHTS_NAME])
def test_a_folder_missing_a_file(weights, tmp_path, missing):
    folder = copy_folder(weights, tmp_path / "w")
    (folder / missing).unlink()
    with pytest.raises(CheckpointError, match=f"has no {missing}") as exc:
        load_generator(folder)
    one_line(exc)
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "nowhere")


def test_either_file_names_its_folder(weights):
    g = load_generator(weights / loading.WEIGHTS_NAME)
    assert isinstance(g, BigGANGenerator)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"channel_width": 8, "output_dim": 32}, "is 1024x16 in the weights"),
        ({"z_dim": 16}, "is 8x1000 in the weights"),
        ({"attention_layer_position": 8}, "missing"),
        ({"output_dim": 64}, "not output_dim 64"),
    ],
)
def test_a_config_that_does_not_match_the_weights(weights, tmp_path, change, words):
    folder = copy_folder(weights, tmp_path / "w")
    config = json.loads((folder / loading.CONFIG_NAME).read_text())
    (folder / loading.CONFIG_NAME).write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=words) as exc:
        load_generator(folder)
    one_line(exc)


def test_extra_keys_and_files_that_are_not_state_dicts(weights, tmp_path):
    folder = copy_folder(weights, tmp_path / "w")
    state = torch.load(folder / loading.WEIGHTS_NAME, weights_only=True)
    torch.save({**state, "extra.weight": torch.zeros(1)}, folder / loading.WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match="unexpected extra.weight"):
        load_generator(folder)
    (folder / loading.WEIGHTS_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(
        CheckpointError, match="not a readable PyTorch state dict"
    ) as exc:
        load_generator(folder)
    one_line(exc)
    (folder / loading.CONFIG_NAME).write_text("{")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_generator(folder)


def test_truncation_is_checked(weights):
    with pytest.raises(ConfigError, match="truncation"):
        lclr.create_generator("biggan", weights=weights, truncation=0.0)
    assert math.isclose(
        lclr.create_generator("biggan", weights=weights, truncation=1).truncation, 1.0
    )


# The command line ------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_registry")
def test_lclr_layers_lists_the_blocks(weights):
    result = CliRunner().invoke(
        cli, ["layers", "--generator", "biggan", "--weights", str(weights)]
    )
    assert result.exit_code == 0, result.output
    assert "biggan: 7 per-layer codes of size 8" in result.output
    assert "layers.3" in result.output and "32x8x8" in result.output
    assert "layers.6" in result.output and "4x32x32" in result.output


@pytest.mark.usefixtures("fresh_registry")
def test_lclr_run_without_any_weights_says_what_to_pass(tmp_path, monkeypatch):
    # an installation without the embedded default (e.g. a slimmed wheel)
    from lclr_biggan import generator as biggan_generator

    monkeypatch.setattr(biggan_generator, "EMBEDDED_WEIGHTS", tmp_path / "none")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["-q", "run", "--generator", "biggan"])
    assert result.exit_code == CheckpointError.exit_code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--weights" in lines[0], result.output


# Found by review: inputs that got past the checks --------------------------------


def write_config(weights, tmp_path, change=(), drop=()):
    """A copy of ``weights`` whose config has ``change`` and lacks ``drop``."""
    folder = copy_folder(weights, tmp_path / "w")
    config = json.loads((folder / loading.CONFIG_NAME).read_text())
    config = {k: v for k, v in {**config, **dict(change)}.items() if k not in drop}
    (folder / loading.CONFIG_NAME).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "change, words",
    [
        ({"channel_width": 4.5}, "channel_width must be a whole number, got 4.5"),
        ({"channel_width": "4"}, "channel_width must be a whole number"),
        ({"z_dim": True}, "z_dim must be a whole number"),
        ({"eps": -1}, "eps must be a small positive number"),
        ({"layers": "abc"}, "layers must be a list"),
        ({"layers": [["false", 16, 1]]}, r"layers\[0\]\[0\] \(up_sample\)"),
        ({"layers": [[True, 16]]}, r"layers\[0\] must be \[up_sample"),
    ],
)
def test_config_values_of_the_wrong_type(weights, tmp_path, change, words):
    # int() used to turn 4.5 into 4 and "4" into 4, bool("false") was True,
    # and a negative eps gave NaN images.
    folder = write_config(weights, tmp_path, change)
    with pytest.raises(CheckpointError, match=words) as exc:
        load_generator(folder)
    one_line(exc)


def test_blocks_must_chain(weights, tmp_path):
    layers = [(False, 16, 16), (True, 8, 8), (False, 8, 8),
              (True, 8, 4), (True, 4, 2), (False, 2, 1)]  # fmt: skip
    folder = write_config(weights, tmp_path, {"layers": layers})
    with pytest.raises(CheckpointError, match="block 1 must take the channels"):
        load_generator(folder)


def test_a_config_missing_fields_names_them(weights, tmp_path):
    folder = write_config(weights, tmp_path, drop=("channel_width", "output_dim"))
    with pytest.raises(
        CheckpointError, match="does not give channel_width, output_dim"
    ):
        load_generator(folder)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"channel_width": 10**9}, "too large to build"),
        ({"num_classes": 10**12}, "8x1000000000000 by the config"),
    ],
)
def test_a_huge_config_allocates_nothing(weights, tmp_path, change, words):
    # the network used to be built before the check: a traceback, or all memory
    folder = write_config(weights, tmp_path, change)
    with pytest.raises(CheckpointError, match=words) as exc:
        load_generator(folder)
    one_line(exc)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("generator.gen_z.weight_orig", float("nan"), "holds NaN or infinity"),
        ("generator.gen_z.weight_u", 0.0, "spectral norm of 0.0"),
        ("generator.bn.weight", 1, "holds torch.int64, not floats"),
    ],
)
def test_damaged_tensors_are_refused(weights, tmp_path, key, value, words):
    # these loaded silently and gave NaN images
    folder = copy_folder(weights, tmp_path / "w")
    state = torch.load(folder / loading.WEIGHTS_NAME, weights_only=True)
    state[key] = torch.full_like(state[key], value, dtype=torch.tensor(value).dtype)
    torch.save(state, folder / loading.WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=words) as exc:
        load_generator(folder)
    one_line(exc)


class _Payload:
    """Pickles as a call that would create ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


@pytest.mark.usefixtures("fresh_registry")
@pytest.mark.parametrize("how", ["torch", "pickle", "empty"])
def test_files_that_would_run_code_or_are_empty(weights, tmp_path, how):
    # a plain pickle used to print torch's protocol warning before the error
    import pickle

    folder = copy_folder(weights, tmp_path / "w")
    marker = tmp_path / "ran"
    target = folder / loading.WEIGHTS_NAME
    if how == "torch":
        torch.save({"x": _Payload(marker)}, target)
    elif how == "pickle":
        target.write_bytes(pickle.dumps({"x": _Payload(marker)}, protocol=4))
    else:
        target.write_bytes(b"")
    result = CliRunner().invoke(
        cli, ["layers", "--generator", "biggan", "--weights", str(folder)]
    )
    assert result.exit_code == CheckpointError.exit_code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a readable PyTorch state dict" in lines[0], lines
    assert not marker.exists()


def test_a_file_instead_of_a_folder(tmp_path):
    (tmp_path / "biggan-deep-128-pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file; pass a folder") as exc:
        load_generator(tmp_path / "biggan-deep-128-pytorch_model.bin")
    one_line(exc)


def test_negative_and_empty_classes():
    # "-1" was looked up as a name: "unknown ImageNet class '-1'"
    with pytest.raises(ConfigError, match="class -1 is out of range"):
        resolve_class("-1")
    with pytest.raises(ConfigError, match="class -1 is out of range"):
        resolve_class(-1, 4, ["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match="class is empty"):
        resolve_class("  ")


@pytest.mark.parametrize("value", ["abc", "", True, None, float("nan")])
def test_truncation_that_is_not_a_number(weights, value):
    # "abc" ended in "could not convert string to float: 'abc'"
    with pytest.raises(ConfigError, match=r"truncation must be a number in \(0, 1\]"):
        lclr.create_generator("biggan", weights=weights, truncation=value)
