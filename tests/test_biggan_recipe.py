"""The GAN recipe with a BigGAN-deep generator, on a tiny config in seconds:
training, exact resume, export to the pytorch-pretrained-biggan layout, and
``lclr run`` on the export with a shape class by name."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_same_gan

import lclr
from lclr.cli import cli
from lclr.errors import CheckpointError, ConfigError
from lclr_biggan import loading
from lclr_biggan.generator import truncated_normal
from lclr_shapes.gan.config import GanConfig
from lclr_shapes.gan.train import Trainer, train

SHAPES = ["arrow", "ell", "heart", "crescent"]


def tiny(**changes) -> GanConfig:
    """A BigGAN-deep run that trains a step in a fraction of a second."""
    settings = dict(
        arch="biggan",
        size=16,
        style_dim=8,
        biggan_width=4,
        biggan_blocks=[(False, 16, 8), (True, 8, 4), (False, 4, 2), (True, 2, 1)],
        biggan_attention=2,
        d_channels={4: 8, 8: 8, 16: 8},
        batch=4,
        r1_interval=2,
        minutes=None,
        steps=3,
        log_every=1,
        ema_kimg=0.01,
    )
    settings.update(changes)
    return GanConfig(**settings)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A two-step run, exported: ``(run folder, weights folder)``."""
    from lclr_shapes.gan.export import export

    root = tmp_path_factory.mktemp("bg")
    torch.set_num_threads(1)
    train(tiny(steps=2), root / "run")
    folder, info = export(root / "run", root / "weights", name="tiny")
    assert info == root / "weights" / "tiny.json"
    return root / "run", folder


def test_a_checkpoint_from_before_the_biggan_fields_still_loads():
    # a run in progress resumes with this code: a saved config without the
    # biggan fields is the stylegan2 recipe it was
    config = GanConfig()
    assert config.arch == "stylegan2"
    saved = json.loads(config.to_json())
    for key in (
        "arch",
        "biggan_width",
        "biggan_blocks",
        "biggan_attention",
        "biggan_lr",
    ):
        saved.pop(key)  # a checkpoint written before these fields existed
    assert GanConfig(**saved) == config


def test_biggan_settings_are_checked():
    with pytest.raises(ValueError, match="class-conditional"):
        tiny(conditional=False)
    with pytest.raises(ValueError, match="stylegan2 only"):
        tiny(pl_weight=1.0)
    with pytest.raises(ValueError, match="arch"):
        tiny(arch="dcgan")
    with pytest.raises(ValueError, match="not output_dim"):
        Trainer(tiny(size=32, d_channels={32: 8, 16: 8, 8: 8, 4: 8}))
    # the Python API too: the format would read -2 as "no attention"
    for position in (-2, len(tiny().biggan_blocks)):
        with pytest.raises(ValueError, match="-1 \\(none\\) or a block from 0"):
            tiny(biggan_attention=position)


def test_a_few_steps_give_finite_losses(tmp_path):
    trainer = train(tiny(), tmp_path)
    assert trainer.step == 3 and trainer.nimg == 12
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        for key in ("loss_d", "loss_g", "cls_real", "cls_fake"):
            assert math.isfinite(record[key]), key
    assert list((tmp_path / "samples").glob("grid_*.png"))
    assert json.loads((tmp_path / "config.json").read_text())["arch"] == "biggan"
    # G trains through the spectral-norm hook: the format's three tensors
    state = trainer.G.state_dict()
    assert {"generator.gen_z.weight_orig", "generator.gen_z.weight_u"} <= set(state)


def test_resume_matches_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    whole = train(tiny(steps=5), tmp_path / "whole")
    train(tiny(steps=3), tmp_path / "split")
    resumed = train(tiny(steps=5), tmp_path / "split", resume=True)
    assert resumed.step == 5 and resumed.config.arch == "biggan"
    assert_same_gan(whole, resumed)


def test_sampling_for_grids_changes_nothing():
    from lclr_shapes.gan.monitor import Probe

    trainer = Trainer(tiny(steps=None))
    trainer.train_step()
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    probe = Probe(trainer.config)
    images = probe.sample(trainer.G, probe.grid_z, probe.grid_c)
    assert images.shape == (32, 3, 16, 16) and trainer.G.training
    for key, value in trainer.G.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_export_loads_strictly_with_the_shape_names(exported):
    run, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == [
        loading.CONFIG_NAME,
        loading.WEIGHTS_NAME,
    ]
    loaded = loading.load_biggan(folder)  # strict keys and shapes
    assert loaded.class_names == tuple(SHAPES)
    assert loaded.config.num_classes == 4 and loaded.config.output_dim == 16
    facts = json.loads((folder.parent / "tiny.json").read_text())
    assert facts["steps"] == 2 and "--arch biggan" in facts["recipe"]
    assert facts["file_bytes"] == (folder / loading.WEIGHTS_NAME).stat().st_size


def test_exported_u_v_and_statistics_are_measured(exported):
    run, folder = exported
    state = torch.load(folder / loading.WEIGHTS_NAME, weights_only=True)
    # u . (W v) is W's largest singular value
    w = state["generator.layers.0.conv_1.weight_orig"]
    u = state["generator.layers.0.conv_1.weight_u"]
    v = state["generator.layers.0.conv_1.weight_v"]
    sigma = torch.dot(u, w.reshape(w.shape[0], -1) @ v)
    top = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
    # (two steps from an orthogonal start: a flat spectrum, slow to settle)
    assert 0.99 * top <= sigma <= top * (1 + 1e-5)
    # one row of statistics per psi, measured: they differ from row to row
    means = state["generator.layers.0.bn_0.running_means"]
    variances = state["generator.layers.0.bn_0.running_vars"]
    assert means.shape[0] == 51 and not torch.equal(means[10], means[50])
    assert (variances > 0).all()


def test_power_iterations_settle_u_and_v():
    from lclr_biggan.training import converge_spectral_norm, trainable_biggan
    from lclr_shapes.gan.biggan import biggan_config

    torch.manual_seed(0)
    model = trainable_biggan(biggan_config(tiny()))
    conv = model.generator.layers[0].conv_1
    with torch.no_grad():
        conv.weight_orig.normal_()  # a spectrum with a gap, as after training
    converge_spectral_norm(model)
    w = conv.weight_orig.reshape(conv.weight_orig.shape[0], -1)
    sigma = torch.dot(conv.weight_u, w @ conv.weight_v)
    assert sigma.item() == pytest.approx(
        torch.linalg.matrix_norm(w, ord=2).item(), rel=1e-4
    )


def test_stored_statistics_reproduce_batch_statistics(exported):
    # At psi = 1 the stored row is the statistics of the measuring batch, so
    # the eval-mode network reproduces the batch-statistics output on it.
    from lclr_biggan.training import STAT_SAMPLES, batch_statistics
    from lclr_shapes.gan import biggan

    run, folder = exported
    model = loading.load_biggan(folder).model
    trained = biggan.build(tiny())
    trained.load_state_dict(
        torch.load(folder / loading.WEIGHTS_NAME, weights_only=True)
    )
    z = truncated_normal((STAT_SAMPLES, 8), torch.Generator().manual_seed(0))
    c = torch.eye(4)[torch.arange(STAT_SAMPLES) % 4]
    with torch.no_grad(), batch_statistics(trained):
        want = trained(z, c, 1.0)
    with torch.no_grad():
        got = model(z, c, 1.0)
    assert (got - want).abs().max() < 1e-4


@pytest.mark.usefixtures("fresh_registry")
def test_lclr_run_on_the_export_with_a_class_name(exported, tmp_path):
    run, folder = exported
    out = tmp_path / "lclr-run"
    args = ["-q", "run", "--generator", "biggan", "--weights", str(folder),
            "--class", "heart", "--layer", "layers.1", "-k", "2",
            "--batch-size", "4", "--iterations", "2", "--alpha", "1.0",
            "--out", str(out), "--no-render"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["generator_options"]["class_label"] == "heart"
    assert (out / "directions.safetensors").is_file()


@pytest.mark.usefixtures("fresh_registry")
def test_an_unknown_class_lists_close_matches(exported, tmp_path):
    run, folder = exported
    g = lclr.create_generator("biggan", weights=folder, class_label="Heart")
    assert g.class_index == 2 and g.describe()["class_name"] == "heart"
    with pytest.raises(ConfigError, match=r"close matches: heart \(2\)"):
        lclr.create_generator("biggan", weights=folder, class_label="hart")
    result = CliRunner().invoke(
        cli,
        ["-q", "run", "--generator", "biggan", "--weights", str(folder),
         "--class", "hart", "--out", str(tmp_path / "r")],
    )  # fmt: skip
    assert result.exit_code == ConfigError.exit_code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "close matches: heart (2)" in lines[0]
    assert "arrow, ell, heart, crescent" in lines[0]


def test_bad_class_names_in_a_config_are_one_line(exported, tmp_path):
    run, folder = exported
    copy = tmp_path / "w"
    copy.mkdir()
    config = json.loads((folder / loading.CONFIG_NAME).read_text())
    (copy / loading.CONFIG_NAME).write_text(
        json.dumps({**config, "class_names": ["a"]})
    )
    (copy / loading.WEIGHTS_NAME).write_bytes(
        (folder / loading.WEIGHTS_NAME).read_bytes()
    )
    with pytest.raises(CheckpointError, match="class_names must list 4"):
        loading.load_biggan(copy)


@pytest.mark.usefixtures("fresh_registry")
def test_the_embedded_folder_is_the_default_when_installed(exported, monkeypatch):
    run, folder = exported
    monkeypatch.setattr("lclr_biggan.generator.EMBEDDED_WEIGHTS", folder)
    g = lclr.create_generator("biggan", class_label="crescent")
    assert g.class_index == 3 and g.info["weights"] == str(folder)


def test_quality_samples_a_biggan_folder(exported):
    from lclr_shapes.quality import sample_source

    run, folder = exported
    images, asked = sample_source("biggan", 6, 0, str(folder), truncation=0.5)
    assert images.shape == (6, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1
    assert asked.shape == (6,) and asked.max() < 4


@pytest.mark.parametrize(
    "text",
    ["16-16,16-8u,8-8,8-4u,4-2,2-1u", "16-8,8-4u,4-4,4-2u,2-2,2-1u", "16-16"],
)
def test_blocks_text_round_trips(text):
    from lclr_shapes.gan.config import BIGGAN_BLOCKS, blocks_text, parse_blocks

    assert blocks_text(parse_blocks(text)) == text
    assert parse_blocks(" 16-16, 16-8u ") == ((False, 16, 16), (True, 16, 8))
    assert blocks_text(BIGGAN_BLOCKS) == "16-16,16-8u,8-8,8-4u,4-2,2-1u"


@pytest.mark.parametrize(
    "args, message",
    [
        # not the syntax
        (["--biggan-blocks", "16-8,8x4"], "--biggan-blocks takes IN-OUT channel"),
        (["--biggan-blocks", ""], "--biggan-blocks takes IN-OUT channel"),
        (["--biggan-blocks", "16-8,-4u"], "got '-4u'"),
        # the syntax, but no network the format can hold
        (["--biggan-blocks", "16-8,8-2u,2-1u"], "block 1 must keep or halve"),
        (["--biggan-blocks", "8-4u,4-2u,2-1u"], "the first block must take 16"),
        (["--biggan-blocks", "16-8u,8-4u,4-2"], "the last block must end with"),
        (["--biggan-blocks", "16-8u,8-4,4-2u,2-1"], "give 16 px, not output_dim 32"),
        (["--biggan-attention", "5", "--biggan-width", "3"], "at least 8 channels"),
        (["--biggan-attention", "6"], "-1 (none) or a block from 0 to 5, got 6"),
    ],
)
def test_a_biggan_architecture_that_does_not_fit_is_one_line(tmp_path, args, message):
    from lclr_shapes.gan.cli import train_gan

    out = tmp_path / "x"
    result = CliRunner().invoke(
        train_gan, ["--out", str(out), "--arch", "biggan", *args]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert message in str(result.exception)
    assert "\n" not in str(result.exception)
    # the options, not the config's field names
    assert "biggan_blocks" not in str(result.exception)
    assert not out.exists()


@pytest.mark.parametrize(
    "option", [["--biggan-blocks", "16-8"], ["--biggan-attention", "2"]]
)
def test_biggan_architecture_options_are_refused_for_stylegan2(tmp_path, option):
    from lclr_shapes.gan.cli import train_gan

    result = CliRunner().invoke(train_gan, ["--out", str(tmp_path / "x"), *option])
    assert result.exit_code != 0
    assert f"{option[0]} is for --arch biggan; add" in str(result.exception)


def test_command_line_sets_the_biggan_architecture(tmp_path):
    from lclr_shapes.gan.cli import train_gan

    out = tmp_path / "run"
    args = ["--out", str(out), "--arch", "biggan", "--steps", "1", "-q",
            "--threads", "1", "--batch-size", "4", "--biggan-width", "4",
            "--z-dim", "8", "--biggan-blocks", "16-8,8-4u,4-2u,2-1u",
            "--biggan-attention", "-1"]  # fmt: skip
    result = CliRunner().invoke(train_gan, args)
    assert result.exit_code == 0, result.output
    trainer = Trainer(GanConfig.from_json((out / "config.json").read_text()))
    arch = trainer.G.config
    assert (arch.z_dim, arch.channel_width, arch.output_dim) == (8, 4, 32)
    assert arch.layers == ((False, 16, 8), (True, 8, 4), (True, 4, 2), (True, 2, 1))
    assert not arch.has_attention()
    # resuming with other blocks names the run's own, as the option spells them
    result = CliRunner().invoke(
        train_gan, ["--out", str(out), "--resume", "--biggan-blocks", "16-8,8-4u"]
    )
    assert result.exit_code != 0
    assert "trained with --biggan-blocks 16-8,8-4u,4-2u,2-1u;" in str(result.exception)


def test_command_line_trains_and_exports_a_biggan(tmp_path):
    from lclr_shapes.gan.cli import export_gan, train_gan

    out = tmp_path / "run"
    result = CliRunner().invoke(
        train_gan,
        ["--out", str(out), "--arch", "biggan", "--steps", "1", "-q",
         "--biggan-width", "4", "--threads", "1", "--batch-size", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = GanConfig.from_json((out / "config.json").read_text())
    assert saved.arch == "biggan" and saved.biggan_width == 4
    # resuming under another arch is refused in one line
    result = CliRunner().invoke(
        train_gan, ["--out", str(out), "--resume", "--arch", "stylegan2"]
    )
    assert result.exit_code != 0
    assert "holds a run trained with --arch biggan;" in str(result.exception)
    result = CliRunner().invoke(
        export_gan, [str(out), "--to", str(tmp_path / "w"), "--name", "s"]
    )
    assert result.exit_code == 0, result.output
    assert loading.load_biggan(tmp_path / "w" / "s").config.channel_width == 4
