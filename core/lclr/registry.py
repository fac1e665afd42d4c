"""Plugin discovery and the registry of named components.

Plugins are found through the ``lclr`` entry-point group (the standard
library's importlib.metadata, which pluggy's own loader also rides on) and
load lazily, once. Each plugin is imported on its own, so one that fails is
reported by ``lclr plugins`` and does not take the others down.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import attrs
import pluggy

from lclr import hookspecs
from lclr.errors import ConfigError, PluginError, UnknownComponentError, choices

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lclr"
PLUGINS_ENV = "LCLR_PLUGINS"

#: kind -> (registration hook, label used in messages)
KINDS = {
    "generator": ("lclr_register_generators", "generator"),
    "direction": ("lclr_register_direction_models", "direction model"),
    "objective": ("lclr_register_objectives", "objective"),
    "evaluator": ("lclr_register_evaluators", "evaluator"),
}


@attrs.frozen
class Component:
    """One named factory contributed by a plugin."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: type | None
    summary: str
    plugin: str
    distribution: str


@attrs.frozen
class PluginInfo:
    """One loaded (or failed) plugin, for ``lclr plugins``."""

    name: str
    distribution: str
    version: str
    error: str | None = None


class Registry:
    """The plugin manager plus every component the plugins registered."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.plugins: list[PluginInfo] = []
        self.components: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        self.conflicts: dict[tuple[str, str], str] = {}
        self.unmatched: list[str] = []
        self._dists: dict[str, str] = {}

    # Loading ----------------------------------------------------------------

    def load_entry_points(self) -> None:
        """Import and register every ``lclr`` entry point, each on its own."""
        wanted = _wanted_plugins()
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if wanted is not None:
            self.unmatched = sorted(wanted - {ep.name for ep in eps})
        for ep in sorted(eps, key=lambda e: e.name):
            if wanted is not None and ep.name not in wanted:
                log.debug("skipping plugin %s (not in %s)", ep.name, PLUGINS_ENV)
                continue
            dist = ep.dist.metadata["Name"] if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if self.pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not stop the rest
                log.debug("plugin %s failed", ep.name, exc_info=True)
                msg = f"{type(exc).__name__}: {exc}"
                self.plugins.append(PluginInfo(ep.name, dist, version, msg))
                continue
            self._dists[ep.name] = dist
            self.plugins.append(PluginInfo(ep.name, dist, version))

    def add_plugin(self, plugin: object, name: str, distribution: str = "") -> None:
        """Register an in-process plugin object (tests, notebooks)."""
        self.pm.register(plugin, name=name)
        self._dists[name] = distribution or name
        self.plugins.append(PluginInfo(name, distribution or name, "-"))
        self._collect(only=name)

    def collect(self) -> None:
        """Check hook names, then run every registration hook."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) or repr(exc.plugin)
            dist = self._dists.get(name, name)
            raise PluginError(
                f"plugin {name} ({dist}) implements a hook lclr does not have: "
                f"{str(exc).split(' in plugin')[0]}; fix or uninstall it"
            ) from None
        self._collect()

    def _collect(self, only: str | None = None) -> None:
        for kind, (hook_name, _) in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                if only is not None and impl.plugin_name != only:
                    continue
                register = self._register_callback(kind, impl.plugin_name)
                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:
                    self._fail(impl.plugin_name, exc)

    def _fail(self, plugin: str, exc: Exception) -> None:
        log.debug("plugin %s failed to register", plugin, exc_info=True)
        for i, info in enumerate(self.plugins):
            if info.name == plugin:
                error = f"{type(exc).__name__}: {exc}"
                self.plugins[i] = attrs.evolve(info, error=error)

    def _register_callback(self, kind: str, plugin: str):
        def register(name, factory, *, options=None, summary=""):
            table = self.components[kind]
            dist = self._dists.get(plugin, plugin)
            if name in table or (kind, name) in self.conflicts:
                # Neither wins silently: the name is unusable until one goes.
                other = table.pop(name).distribution if name in table else "another"
                label = KINDS[kind][1]
                self.conflicts[kind, name] = (
                    f"{label} '{name}' is registered by both {other} and {dist}; "
                    f"uninstall one, or list the plugins to load in {PLUGINS_ENV}"
                )
                return
            if options is not None and not attrs.has(options):
                raise TypeError(f"options of {kind} '{name}' must be an attrs class")
            table[name] = Component(kind, name, factory, options, summary, plugin, dist)

        return register

    # Lookup -------------------------------------------------------------------

    def get(self, kind: str, name: str) -> Component:
        if (kind, name) in self.conflicts:
            raise PluginError(self.conflicts[kind, name])
        table = self.components[kind]
        if name not in table:
            label = KINDS[kind][1]
            hint = _failed_hint(self.plugins)
            raise UnknownComponentError(
                f"unknown {label} '{name}'; installed: {choices(table)}{hint}"
            )
        return table[name]

    def build(self, kind: str, name: str, options: dict | None, **args) -> Any:
        """Validate ``options`` against the component's class, then build it."""
        comp = self.get(kind, name)
        return comp.factory(options=make_options(comp, options or {}), **args)


def make_options(comp: Component, values: dict) -> Any:
    """The component's attrs options instance for ``values``, validated."""
    label = f"{KINDS[comp.kind][1]} '{comp.name}'"
    fields = set()
    if comp.options is not None:
        fields = {f.name for f in attrs.fields(comp.options) if f.init}
    if not fields and values:
        # an options class with no settable field takes none either
        raise ConfigError(f"{label} takes no options; got {', '.join(values)}")
    if comp.options is None:
        return None
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"{label} has no option {', '.join(unknown)}; its options: "
            f"{choices(fields)}"
        )
    try:
        return comp.options(**values)
    except (TypeError, ValueError) as exc:
        # attrs' own validators put (message, attribute, ...) in args.
        message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else exc
        raise ConfigError(f"{label}: {message}") from None


def options_dict(options: Any) -> dict:
    """A JSON-able dict of an options instance (``{}`` for ``None``)."""
    if options is None:
        return {}
    return json.loads(json.dumps(attrs.asdict(options), default=list))


def _wanted_plugins() -> set[str] | None:
    value = os.environ.get(PLUGINS_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _failed_hint(plugins: list[PluginInfo]) -> str:
    failed = [p.name for p in plugins if p.error]
    if not failed:
        return ""
    return f" (failed to load: {', '.join(failed)}; see `lclr plugins`)"


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loading the plugins on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        pm = pluggy.PluginManager("lclr")
        pm.add_hookspecs(hookspecs)
        registry = Registry(pm)
        registry.load_entry_points()
        registry.collect()
        _REGISTRY = registry
    return _REGISTRY


def reset_registry() -> None:
    """Forget the loaded plugins (tests; after installing a plugin)."""
    global _REGISTRY
    _REGISTRY = None


# The public verbs ------------------------------------------------------------


def create_generator(name: str, weights=None, **options):
    """A :class:`lclr.Generator` from any installed plugin.

    ``weights=None`` means the plugin's embedded default weights.
    """
    return get_registry().build("generator", name, options, weights=weights)


def create_direction_model(name: str, k: int, latent_dim: int, **options):
    """A :class:`lclr.DirectionModel` with ``k`` directions."""
    if k < 2:
        raise ConfigError(f"K must be at least 2 (got {k}); use -k 2 or more")
    return get_registry().build("direction", name, options, k=k, latent_dim=latent_dim)


def create_objective(name: str, **options):
    """A :class:`lclr.Objective`; LatentCLR's takes ``temperature``."""
    return get_registry().build("objective", name, options)


def create_evaluator(name: str, **options):
    """A :class:`lclr.Evaluator`."""
    return get_registry().build("evaluator", name, options)


def available() -> dict[str, list[str]]:
    """For each kind, the sorted names installed."""
    registry = get_registry()
    return {kind: sorted(table) for kind, table in registry.components.items()}
