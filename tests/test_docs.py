"""Docs that cannot rot: every hook and every CLI option is documented."""

import inspect
from pathlib import Path

import click

from lclr import hookspecs
from lclr.cli import cli

DOCS = Path(__file__).resolve().parents[1] / "docs"


def hook_names():
    return [n for n, f in inspect.getmembers(hookspecs) if n.startswith("lclr_")]


def test_every_hook_has_a_docs_section_and_a_docstring():
    text = (DOCS / "hooks.md").read_text()
    for name in hook_names():
        assert f"\n## {name}\n" in text, name
        assert getattr(hookspecs, name).__doc__, name


def test_every_hook_is_exercised_by_a_test():
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    core = (Path(hookspecs.__file__).parent / "training.py").read_text()
    core += (Path(hookspecs.__file__).parent / "registry.py").read_text()
    core += (Path(hookspecs.__file__).parent / "cli.py").read_text()
    for name in hook_names():
        assert name in core or name in tests, f"{name} is never called"


def test_every_cli_option_is_documented():
    text = (DOCS / "cli.md").read_text()
    for name, command in cli.commands.items():
        assert f"lclr {name}" in text, name
        for param in command.params:
            if isinstance(param, click.Option):
                flags = [o for o in param.opts if o.startswith("--")] or param.opts
                assert any(f"`{f}" in text or f"[{f}" in text for f in flags), (
                    name,
                    flags,
                )
