"""Run configuration: one frozen attrs class, validated on construction.

The CLI, the Python API and the run folder all speak :class:`RunConfig`; it
round-trips through JSON and TOML. Defaults follow the paper, and the
authors' release where the paper is silent (see docs/defaults.md).
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import attrs
import cattrs

from lclr.errors import ConfigError

_converter = cattrs.Converter()


def _strict_int(value, _type) -> int:
    """Refuse 4.7 or true where an integer is meant, instead of truncating."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"expected an integer, got {value!r}")
    if isinstance(value, str):
        raise ConfigError(f"expected an integer, got {value!r}")
    return int(value)


def _strict_bool(value, _type) -> bool:
    """Refuse 1 or "yes" where true/false is meant."""
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {value!r}")
    return value


_converter.register_structure_hook(int, _strict_int)
_converter.register_structure_hook(bool, _strict_bool)


def _at_least(minimum, what):
    def check(instance, attribute, value):
        if isinstance(value, bool) or not value >= minimum:
            raise ConfigError(f"{what} must be at least {minimum}; got {value}")

    return check


def _positive(what):
    def check(instance, attribute, value):
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{what} must be greater than 0 and finite; got {value}")

    return check


def _optional(check):
    def optional(instance, attribute, value):
        if value is not None:
            check(instance, attribute, value)

    return optional


def _alpha_range(instance, attribute, value):
    if value is None:
        return
    lo, hi = value
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ConfigError(f"--alpha-range must be 0 < MIN <= MAX; got {lo}, {hi}")


def _edit_layers(instance, attribute, value):
    if value is not None and (not value or min(value) < 0):
        raise ConfigError("--edit-layers needs non-negative code indices, e.g. 0-3")


def _bool(instance, attribute, value):
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} must be true or false; got {value!r}")


def _milestones(instance, attribute, value):
    if any(m < 1 for m in value) or list(value) != sorted(set(value)):
        raise ConfigError(
            "--lr-milestones must be increasing steps >= 1, e.g. 1000,5000"
        )


def _tuple_or_none(value):
    return None if value is None else tuple(value)


@attrs.frozen(kw_only=True)
class RunConfig:
    """Everything needed to (re)run a LatentCLR training."""

    generator: str = attrs.field(default="stylegan2")
    """Generator plugin name."""
    weights: str | None = None
    """Checkpoint path; None for the plugin's embedded default."""
    generator_options: dict[str, Any] = attrs.field(factory=dict)
    """Options of the generator plugin (space, truncation, class...)."""
    layer: str | None = None
    """Target layer f; None for the generator's recommended layer."""
    edit_layers: tuple[int, ...] | None = attrs.field(
        default=None, converter=_tuple_or_none, validator=_edit_layers
    )
    """Per-layer codes (W+ indices) an edit goes to; None for all."""
    direction: str = "nonlinear"
    """Direction model: global, linear or nonlinear."""
    direction_options: dict[str, Any] = attrs.field(factory=dict)
    objective: str = "latentclr"
    objective_options: dict[str, Any] = attrs.field(factory=dict)
    k: int = attrs.field(default=8, validator=_at_least(2, "K (-k)"))
    """K, number of directions."""
    alpha: float = attrs.field(
        default=3.0, converter=float, validator=_positive("alpha")
    )
    """α, the norm of every edit (also the step used for rendering)."""
    alpha_range: tuple[float, float] | None = attrs.field(
        default=None, converter=_tuple_or_none, validator=_alpha_range
    )
    """Sample α uniformly from this range while training; None for fixed α."""
    batch_size: int = attrs.field(default=16, validator=_at_least(2, "batch size N"))
    """N, samples per step."""
    iterations: int = attrs.field(default=1000, validator=_at_least(1, "iterations"))
    lr: float = attrs.field(default=1e-3, converter=float, validator=_positive("lr"))
    weight_decay: float = attrs.field(
        default=1e-3, converter=float, validator=_at_least(0, "weight_decay")
    )
    """Adam's weight decay (the authors' release: 1e-3)."""
    lr_milestones: tuple[int, ...] = attrs.field(
        default=(1000, 5000), converter=tuple, validator=_milestones
    )
    """Multiply the learning rate by lr_gamma at these steps (authors: 1000, 5000)."""
    lr_gamma: float = attrs.field(
        default=0.2, converter=float, validator=_positive("lr_gamma")
    )
    grad_clip: float | None = attrs.field(
        default=None, validator=_optional(_positive("--grad-clip"))
    )
    """Clip the gradient norm to this value; None for no clipping."""
    seed: int = 0
    device: str = "cpu"
    world_size: int = attrs.field(default=1, validator=_at_least(1, "world_size"))
    """G, seed streams in the global batch of G·N latents (one per torchrun
    process by default; one process with G > 1 samples them all)."""
    chunk_size: int | None = attrs.field(
        default=None, validator=_optional(_at_least(1, "chunk_size"))
    )
    """Run the K·N edited forward in micro-batches of this many codes
    (two passes, memory bounded by one chunk's graph); None: automatic."""
    max_memory: float | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(float),
        validator=_optional(_positive("--max-memory")),
    )
    """GiB one step may use; micro-batches are chosen to fit. None: most of
    what the device has free."""
    autocast: bool | None = attrs.field(default=None, validator=_optional(_bool))
    """bf16 autocast of the generator (the loss stays float32); None: on for
    CUDA, off elsewhere."""
    channels_last: bool = attrs.field(default=False, validator=_bool)
    """Keep the generator's convolutions in channels-last memory format."""
    compile: bool = attrs.field(default=False, validator=_bool)
    """Compile the truncated forward with torch.compile (first steps slow)."""
    checkpoint_every: int = attrs.field(
        default=200, validator=_at_least(1, "checkpoint_every")
    )
    log_every: int = attrs.field(default=10, validator=_at_least(1, "log_every"))

    # Round trips ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return _converter.unstructure(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise ConfigError(
                f"a config must be a table of keys and values, not {kind}"
            )
        names = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - names)
        if len(unknown) > max(3, len(data) / 2):  # mostly foreign: another file
            shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
            raise ConfigError(
                f"this is not an lclr run config: {len(unknown)} of its "
                f"{len(data)} keys ({shown}) are not lclr's; point at an lclr "
                "run folder or config file"
            )
        if unknown:
            raise ConfigError(
                f"unknown config key {', '.join(unknown)}; valid keys: "
                f"{', '.join(sorted(names))}"
            )
        try:
            return _converter.structure(data, cls)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"invalid config: {_first_error(exc)}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None

    def to_toml(self) -> str:
        lines, tables = [], []
        for key, value in self.to_dict().items():
            if value is None:
                continue  # TOML has no null: a missing key means the default
            if isinstance(value, dict):
                tables.append((key, value))
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, table in tables:
            lines.append(f"\n[{key}]")
            lines += [
                f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None
            ]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> RunConfig:
        try:
            return cls.from_dict(tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config is not valid TOML: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        """Read a ``.json`` or ``.toml`` config file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        if path.suffix == ".toml":
            return cls.from_toml(text)
        return cls.from_json(text)

    def evolve(self, **changes) -> RunConfig:
        return attrs.evolve(self, **changes)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} to TOML")


def _first_error(exc: BaseException, where: str = "") -> str:
    """The first leaf error inside cattrs' exception groups, with its key."""
    if isinstance(exc, cattrs.BaseValidationError):
        for sub in exc.exceptions:
            note = getattr(sub, "__notes__", None) or [""]
            name = getattr(note[0], "name", None)
            key = f"{where}.{name}" if name else where
            return _first_error(sub, key)
    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    key = where.lstrip(".")
    return f"{key}: {message}" if key and key not in message else message
