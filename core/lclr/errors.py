"""The errors a user can cause. The CLI turns each into one line on stderr.

Anything that is not an :class:`LclrError` is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class LclrError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UnknownComponentError(LclrError, LookupError):
    """A generator, direction model, objective, evaluator or layer name that no
    installed plugin provides."""

    exit_code = 2


class ConfigError(LclrError, ValueError):
    """A configuration value out of range, or a config file that cannot be read."""

    exit_code = 2


class PluginError(LclrError):
    """A plugin failed to load, or two plugins claim one name."""

    exit_code = 3


class CheckpointError(LclrError):
    """A weights or run file that is not what it should be, or does not fit."""

    exit_code = 4


class RunFolderError(LclrError):
    """A run folder that is missing, incomplete, or would be overwritten."""

    exit_code = 5


class ProcessGroupError(LclrError):
    """Another process of a multi-process run stopped or cannot be reached."""

    exit_code = 7


def choices(names) -> str:
    """``names`` as a sorted, comma-separated list for an error message."""
    names = sorted(names)
    return ", ".join(names) if names else "(none installed)"


def close_matches(word: str, candidates, n: int = 3, cutoff: float = 0.5) -> list[str]:
    """Candidates a mistyped ``word`` may have meant, at most ``n``, each
    once: those containing it, then those spelled alike (``difflib``), then
    those it contains ("retriever" finds every retriever first). Case is
    ignored; the candidates come back as given."""
    import difflib

    candidates = list(candidates)
    word = word.casefold()
    if not word:
        return []
    folded: dict[str, list[str]] = {}
    for c in candidates:
        folded.setdefault(c.casefold(), []).append(c)
    keys = list(folded)
    near = [k for k in keys if word in k]
    near += difflib.get_close_matches(word, keys, n=n, cutoff=cutoff)
    near += [k for k in keys if k in word]
    found = [c for k in dict.fromkeys(near) for c in folded[k]]
    return found[:n]


def os_error_line(exc: OSError) -> str:
    """One line for a file system refusal; a file where a folder is needed
    (making ``a/b`` when ``a`` is a file) is named as such."""
    name = exc.filename
    if name is not None and exc.errno in (errno.EEXIST, errno.ENOTDIR):
        path = Path(os.fsdecode(name))
        for part in (path, *path.parents):
            if part.is_file():
                return f"{part} is a file, not a folder; choose another path"
    where = f": {name}" if name else ""
    return f"{exc.strerror or exc}{where}; check the path and its rights"
