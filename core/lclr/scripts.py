"""For scripts built on lclr (its benchmarks, or a user's own): the errors a
user can cause end in one line, as they do on the command line.

``ArgumentParser`` is argparse's, but a bad option or value is one line
that names ``--help`` instead of the usage block with the error under it;
``run_main`` runs a script's ``main`` and turns lclr's errors, Ctrl-C and
file system refusals into one line and the exit code the CLI would give.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from lclr.errors import LclrError, os_error_line


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line each."""

    def error(self, message: str) -> NoReturn:
        """Exit 2 with ``PROG: error: MESSAGE. See 'PROG --help'.``"""
        stop = "" if message.endswith((".", "?", "!")) else "."
        self.exit(2, f"{self.prog}: error: {message}{stop} See '{self.prog} --help'.\n")


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_main(main: Callable[[], object]) -> None:
    """Call ``main()``; an error a user can cause ends the script in one
    line on stderr, with the exit code the ``lclr`` command uses."""
    try:
        main()
    except LclrError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        print(f"Error: {os_error_line(exc)}", file=sys.stderr)
        sys.exit(6)
