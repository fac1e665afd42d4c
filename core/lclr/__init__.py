"""lclr: interpretable edit directions in pre-trained GANs, by LatentCLR.

Importing ``lclr`` is cheap: torch and the plugins load on first use of the
API below.
"""

from __future__ import annotations

from lclr.errors import LclrError
from lclr.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "create_generator": "lclr.registry",
    "create_direction_model": "lclr.registry",
    "create_objective": "lclr.registry",
    "create_evaluator": "lclr.registry",
    "available": "lclr.registry",
    "load_run": "lclr.api",
    "LoadedRun": "lclr.api",
    "train": "lclr.training",
    "RunConfig": "lclr.config",
    "Generator": "lclr.interfaces",
    "DirectionModel": "lclr.interfaces",
    "Objective": "lclr.interfaces",
    "Evaluator": "lclr.interfaces",
}

__all__ = ["LclrError", "hookimpl", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lclr' has no attribute {name!r}")
