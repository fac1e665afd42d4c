"""Plugin discovery: real entry points, broken plugins, name clashes."""

import importlib.metadata

import attrs
import pytest

import lclr
from lclr import hookimpl
from lclr.errors import ConfigError, PluginError, UnknownComponentError
from lclr.registry import get_registry

pytestmark = pytest.mark.usefixtures("fresh_registry")


def test_toy_plugin_is_found_through_its_installed_entry_point():
    # lclr-toy is a real distribution installed into the test environment.
    eps = importlib.metadata.entry_points(group="lclr")
    assert "toy" in {ep.name for ep in eps}
    registry = get_registry()
    info = next(p for p in registry.plugins if p.name == "toy")
    assert info.distribution == "lclr-toy" and info.version == "0.0.1"
    assert info.error is None
    assert "toy" in lclr.available()["generator"]
    g = lclr.create_generator("toy", width=4)
    assert g.layer_shape("conv2") == (4, 8, 8)


def test_bundled_plugins_register_their_components():
    names = lclr.available()
    assert {"global", "linear", "nonlinear"} <= set(names["direction"])
    assert "latentclr" in names["objective"]
    assert "stylegan2" in names["generator"]


def test_a_plugin_that_fails_to_import_does_not_stop_the_others(monkeypatch):
    real = importlib.metadata.entry_points

    def with_broken(**kw):
        eps = list(real(**kw))
        broken = importlib.metadata.EntryPoint(
            "broken", "lclr_no_such_module_xyz", "lclr"
        )
        return importlib.metadata.EntryPoints([*eps, broken])

    monkeypatch.setattr(importlib.metadata, "entry_points", with_broken)
    registry = get_registry()
    info = next(p for p in registry.plugins if p.name == "broken")
    assert "ModuleNotFoundError" in info.error
    assert "toy" in registry.components["generator"]


def test_two_plugins_claiming_one_name_is_an_error_naming_both():
    class Impostor:
        @hookimpl
        def lclr_register_generators(self, register):
            register("toy", lambda weights, options: None)

    registry = get_registry()
    registry.add_plugin(Impostor(), "impostor", "lclr-impostor")
    # Neither wins silently: using the name is an error naming both.
    both = "'toy' is registered by both lclr-toy and lclr-impostor"
    with pytest.raises(PluginError, match=both):
        lclr.create_generator("toy")
    assert both in next(iter(registry.conflicts.values()))
    # The other components still work.
    assert lclr.create_direction_model("global", k=2, latent_dim=3).k == 2


def test_a_misspelt_hook_fails_loudly_with_the_plugin_name(monkeypatch):
    from lclr.registry import Registry

    class Typo:
        @hookimpl
        def lclr_register_generator(self, register):  # missing "s"
            pass

    registry = get_registry()
    registry.pm.register(Typo(), name="typo-plugin")
    with pytest.raises(PluginError, match="typo-plugin"):
        Registry.collect(registry)


def test_environment_variable_limits_the_plugins(monkeypatch):
    monkeypatch.setenv("LCLR_PLUGINS", "toy")
    registry = get_registry()
    assert [p.name for p in registry.plugins] == ["toy"]
    with pytest.raises(UnknownComponentError, match="unknown direction model 'linear'"):
        lclr.create_direction_model("linear", k=2, latent_dim=4)


def test_unknown_names_list_the_choices():
    with pytest.raises(UnknownComponentError, match="installed: .*toy"):
        lclr.create_generator("stylegan3")
    with pytest.raises(
        UnknownComponentError, match="installed: ganspace, global, linear"
    ):
        lclr.create_direction_model("curved", k=2, latent_dim=4)


def test_options_are_validated_by_the_plugins_class():
    with pytest.raises(ConfigError, match="has no option colour; its options: .*width"):
        lclr.create_generator("toy", colour=3)
    with pytest.raises(ConfigError, match="width must be at least 1"):
        lclr.create_generator("toy", width=0)
    with pytest.raises(ConfigError, match="K must be at least 2"):
        lclr.create_direction_model("global", k=1, latent_dim=4)
    # an options class without a field (SeFa's) takes none, said as such
    with pytest.raises(
        ConfigError, match="^direction model 'sefa' takes no options; got samples$"
    ):
        lclr.create_direction_model("sefa", k=2, latent_dim=4, samples=10)


def test_every_registered_option_class_is_frozen_attrs():
    registry = get_registry()
    for table in registry.components.values():
        for comp in table.values():
            if comp.options is not None:
                assert attrs.has(comp.options), comp.name
                assert comp.options.__attrs_attrs__ is not None


@pytest.mark.parametrize(
    "word, expected",
    [
        ("hart", ["heart"]),  # spelled alike
        ("cres", ["crescent"]),  # a prefix
        ("heart2", ["heart"]),  # contains a name
        ("HART", ["heart"]),  # case is ignored
        ("Cres", ["crescent"]),
        ("zzz", []),
        ("", []),
    ],
)
def test_close_matches_serve_every_unknown_name_hint(word, expected):
    from lclr.errors import close_matches

    assert close_matches(word, ["arrow", "ell", "heart", "crescent"]) == expected


def test_close_matches_give_the_candidates_as_spelled():
    from lclr.errors import close_matches

    assert close_matches("golden", ["Golden Retriever", "Tabby"]) == [
        "Golden Retriever"
    ]


def test_close_matches_list_names_containing_the_word_first():
    from lclr.errors import close_matches

    names = ["screwdriver", "golden retriever", "labrador retriever"]
    assert close_matches("retriever", names, n=2) == names[1:]
