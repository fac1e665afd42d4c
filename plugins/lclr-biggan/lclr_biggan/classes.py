"""Class lookup by index or name, without network.

Weights whose ``config.json`` lists ``class_names`` are looked up by those
names; others by ImageNet's.

The table ``imagenet_classes.tsv`` ships with the plugin: one line per class
in index order, its WordNet id and its WordNet lemmas (the first is the name
shown). A name matches any lemma, ignoring case, underscores and spacing.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Sequence

from lclr.errors import ConfigError, close_matches

TABLE = "imagenet_classes.tsv"
IMAGENET_CLASSES = 1000


@functools.cache
def imagenet_classes() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(wordnet_id, lemmas)`` of each ImageNet class, in index order."""
    text = importlib.resources.files(__package__).joinpath(TABLE).read_text("utf-8")
    rows = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        index, wnid, names = line.split("\t")
        assert int(index) == len(rows), f"{TABLE} is out of order at {index}"
        rows.append((wnid, tuple(n.strip() for n in names.split(","))))
    return tuple(rows)


def class_name(index: int) -> str:
    """The shown name of ImageNet class ``index``, e.g. ``'tench'``."""
    return imagenet_classes()[index][1][0]


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


@functools.cache
def _lemma_index() -> dict[str, tuple[int, ...]]:
    """Normalised lemma -> the classes that have it (a few have two)."""
    table: dict[str, list[int]] = {}
    for i, (wnid, names) in enumerate(imagenet_classes()):
        for name in (wnid, *names):
            table.setdefault(_key(name), []).append(i)
    return {k: tuple(dict.fromkeys(v)) for k, v in table.items()}


def _listing(indices) -> str:
    return ", ".join(f"{class_name(i)} ({i})" for i in indices)


def _own_class(label: str, names: Sequence[str]) -> int:
    """The index of ``label`` among the weights' own ``names``."""
    keys = [_key(name) for name in names]
    key = _key(label)
    if key in keys:
        return keys.index(key)
    near = close_matches(key, keys, n=len(keys))
    listing = ", ".join(
        f"{names[i]} ({i})" for i in dict.fromkeys(map(keys.index, near))
    )
    hint = f"close matches: {listing}" if near else "no close match"
    every = ", ".join(names)
    raise ConfigError(f"unknown class {label!r}; {hint}; these weights have: {every}")


def resolve_class(
    label: int | str,
    num_classes: int = IMAGENET_CLASSES,
    names: Sequence[str] | None = None,
) -> int:
    """The class index for ``label``: an index, a digit string, or a name.

    Names are the weights' own ``names`` when given (one per class), else
    ImageNet's, WordNet ids included. Raises :class:`ConfigError` with
    close matches otherwise.
    """
    if isinstance(label, str) and re.fullmatch(r"[+-]?\d+", label.strip()):
        label = int(label)  # "-1" is an index out of range, not a name
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise ConfigError(f"class must be an index or a name, got {label!r}")
    if isinstance(label, str) and not _key(label):
        raise ConfigError(
            f"class is empty; give an index 0-{num_classes - 1} or a name"
        )
    if isinstance(label, int):
        if 0 <= label < num_classes:
            return label
        raise ConfigError(
            f"class {label} is out of range; these weights have classes "
            f"0-{num_classes - 1}"
        )
    if names:
        return _own_class(label, names)
    if num_classes != IMAGENET_CLASSES:
        raise ConfigError(
            f"class names are ImageNet's; these weights have {num_classes} "
            f"classes, so give an index 0-{num_classes - 1}"
        )
    key = _key(label)
    lemmas = _lemma_index()
    found = lemmas.get(key, ())
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(
            f"class {label!r} is ambiguous: {_listing(found)}; give the index"
        )
    near = close_matches(key, lemmas, n=5, cutoff=0.6)
    indices = list(dict.fromkeys(i for name in near for i in lemmas[name]))[:5]
    hint = f"close matches: {_listing(indices)}" if indices else "no close match"
    raise ConfigError(
        f"unknown ImageNet class {label!r}; {hint}; or give an index 0-999"
    )
