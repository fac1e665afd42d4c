"""The embedded BigGAN-deep default: the shapes one `lclr run --generator
biggan` uses with no weights given."""

import json

import pytest
from click.testing import CliRunner

import lclr
from lclr.cli import cli
from lclr.errors import CheckpointError, ConfigError
from lclr.interfaces import weights_sha256
from lclr_biggan import generator as biggan_generator
from lclr_biggan.loading import CONFIG_NAME, EMBEDDED_WEIGHTS, WEIGHTS_NAME
from lclr_shapes.render import SHAPES

pytestmark = pytest.mark.usefixtures("fresh_registry")
PROVENANCE = EMBEDDED_WEIGHTS.with_suffix(".json")


def test_embedded_weights_are_small_and_documented():
    files = [EMBEDDED_WEIGHTS / CONFIG_NAME, EMBEDDED_WEIGHTS / WEIGHTS_NAME]
    size = sum(f.stat().st_size for f in files)
    assert size <= 10 * 2**20
    facts = json.loads(PROVENANCE.read_text())
    assert facts["seed"] == 0 and facts["steps"] > 0 and facts["finished"]
    assert "--arch biggan" in facts["recipe"]
    assert facts["quality"] is not None


def test_embedded_generator_names_the_shapes():
    g = lclr.create_generator("biggan")
    assert g.describe()["class_names"] == list(SHAPES)
    # the digest a run records, to notice replaced weights
    digest = weights_sha256(EMBEDDED_WEIGHTS / WEIGHTS_NAME)
    assert g.describe()["sha256"] == digest
    images = g.synthesize(g.sample_latent(4, seed=0))
    assert images.shape == (4, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1


def run_args(out, *extra):
    return ["-q", "run", "--generator", "biggan", "--iterations", "2", "-k", "2",
            "--batch-size", "4", "--out", str(out), *extra]  # fmt: skip


def test_lclr_run_biggan_with_and_without_a_class(tmp_path):
    for name, extra in [("default", ()), ("heart", ("--class", "heart"))]:
        result = CliRunner().invoke(cli, run_args(tmp_path / name, *extra))
        assert result.exit_code == 0, result.output
        assert (tmp_path / name / "images" / "grid.png").exists()
    config = json.loads((tmp_path / "heart" / "config.json").read_text())
    assert config["generator_options"]["class_label"] == "heart"


def test_an_unknown_class_is_one_line_with_close_matches(tmp_path):
    result = CliRunner().invoke(cli, run_args(tmp_path / "r", "--class", "hart"))
    assert result.exit_code == ConfigError.exit_code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "unknown class 'hart'" in lines[0] and "heart" in lines[0]
    assert not (tmp_path / "r").exists()


def test_without_the_embedded_files_the_api_asks_for_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(biggan_generator, "EMBEDDED_WEIGHTS", tmp_path / "none")
    with pytest.raises(CheckpointError, match="pass --weights") as exc:
        lclr.create_generator("biggan")
    assert "\n" not in str(exc.value)


def test_recorded_quality_is_what_the_quality_command_measures():
    from lclr_shapes.quality import quality_of_source

    recorded = json.loads(PROVENANCE.read_text())["quality"]
    report = quality_of_source("biggan", n=1000, seed=0)
    assert report["pass"] == recorded["passes"]
    assert report["good"]["share"] == pytest.approx(recorded["good_share"], abs=0.01)
    for name, share in report["classes"]["shares"].items():
        assert share == pytest.approx(recorded["class_shares"][name], abs=0.01)
    for name, share in report["good"]["by_class"].items():
        assert share == pytest.approx(recorded["good_share_by_class"][name], abs=0.01)
