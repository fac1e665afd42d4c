"""RunConfig: validation on construction and the JSON/TOML round trips."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lclr.config import RunConfig
from lclr.errors import ConfigError


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"k": 1}, "K (-k) must be at least 2"),
        ({"batch_size": 1}, "batch size N must be at least 2"),
        ({"alpha": 0}, "alpha must be greater than 0"),
        ({"alpha": -2.5}, "alpha must be greater than 0"),
        ({"iterations": 0}, "iterations must be at least 1"),
        ({"lr": 0}, "lr must be greater than 0"),
        ({"alpha_range": (2.0, 1.0)}, "--alpha-range"),
        ({"edit_layers": (-1,)}, "--edit-layers"),
    ],
)
def test_invalid_values_are_refused_on_construction(changes, needle):
    with pytest.raises(
        ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")
    ):
        RunConfig(**changes)


configs = st.builds(
    RunConfig,
    generator=st.sampled_from(["stylegan2", "toy"]),
    weights=st.none() | st.just("a b/ç.pt"),
    layer=st.none() | st.just("convs.2"),
    edit_layers=st.none() | st.lists(st.integers(0, 9), min_size=1).map(tuple),
    k=st.integers(2, 200),
    alpha=st.floats(0.01, 50),
    alpha_range=st.none() | st.just((0.5, 4.0)),
    batch_size=st.integers(2, 64),
    lr=st.floats(1e-6, 1.0),
    grad_clip=st.none() | st.floats(0.1, 10),
    generator_options=st.just({"truncation": 0.7, "class_label": "heart"}),
    objective_options=st.just({"temperature": 0.05}),
)


@given(configs)
def test_json_round_trip(config):
    assert RunConfig.from_json(config.to_json()) == config


@given(configs)
def test_toml_round_trip(config):
    assert RunConfig.from_toml(config.to_toml()) == config


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown config key kk; valid keys: .*k"):
        RunConfig.from_dict({"kk": 3})


def test_wrong_type_is_one_clear_error():
    with pytest.raises(ConfigError, match="invalid config"):
        RunConfig.from_dict({"k": "many"})


def test_config_files(tmp_path):
    (tmp_path / "a.toml").write_text('k = 4\ndirection = "global"\n')
    assert RunConfig.from_file(tmp_path / "a.toml").k == 4
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.from_file(tmp_path / "b.json")
    with pytest.raises(ConfigError, match="cannot read config"):
        RunConfig.from_file(tmp_path / "missing.toml")


def test_a_foreign_config_is_named_as_such_in_one_short_line():
    # Found in review: `lclr run --resume` on a GAN recipe's folder listed
    # some 60 key names in one 715-character line.
    foreign = {f"key_{i}": i for i in range(40)}
    with pytest.raises(ConfigError, match="not an lclr run config: 40 of its 40") as e:
        RunConfig.from_dict(foreign)
    assert len(str(e.value)) < 200
