"""Hook specifications: the whole contract between lclr and its plugins.

Every hook name starts with ``lclr_``. Registration hooks hand the plugin a
``register`` callback; lifecycle hooks let a plugin watch a training run.
Specs only ever gain arguments, so plugins written today keep working.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("lclr")
hookimpl = pluggy.HookimplMarker("lclr")


# Registration -------------------------------------------------------------


@hookspec
def lclr_register_generators(register):
    """Contribute generators.

    Fires once, when the plugin manager is first used.

    ``register(name, factory, *, options=None, summary="")`` adds one
    generator. ``factory(weights, options)`` returns a
    :class:`lclr.Generator`; ``weights`` is a path or ``None`` for the
    plugin's embedded default, and ``options`` an instance of the attrs class
    given as ``options`` (validated by the core) or ``None``.
    """


@hookspec
def lclr_register_direction_models(register):
    """Contribute direction models.

    ``register(name, factory, *, options=None, summary="")``;
    ``factory(k, latent_dim, options)`` returns a
    :class:`lclr.DirectionModel` with K directions in a space of size
    ``latent_dim``.
    """


@hookspec
def lclr_register_objectives(register):
    """Contribute objectives.

    ``register(name, factory, *, options=None, summary="")``;
    ``factory(options)`` returns a :class:`lclr.Objective`.
    """


@hookspec
def lclr_register_evaluators(register):
    """Contribute evaluators, which score a trained run.

    ``register(name, factory, *, options=None, summary="")``;
    ``factory(options)`` returns a :class:`lclr.Evaluator`.
    """


@hookspec
def lclr_register_commands(cli):
    """Add click commands or groups to the ``lclr`` command line.

    ``cli`` is the top-level click group; call ``cli.add_command(...)``.
    Keep imports of heavy libraries (torch) inside the commands, so that
    ``lclr --help`` stays fast.
    """


# Lifecycle of a run ---------------------------------------------------------


@hookspec
def lclr_run_start(run):
    """A training run is about to take its first step (also after a resume).

    ``run`` is the :class:`lclr.training.RunState`: its ``config``,
    ``folder``, ``generator``, ``directions`` and the ``step`` it starts from.
    The return value is ignored.
    """


@hookspec
def lclr_step_end(run, step, metrics):
    """A training step finished.

    ``step`` counts from 1; ``metrics`` is the dict of floats logged for it
    (``loss``, ``acc``, ``lr`` and whatever the objective reports).
    """


@hookspec
def lclr_checkpoint_written(run, path):
    """A checkpoint was written atomically to ``path`` (by rank 0 alone in a
    multi-process run; the other hooks fire in every process)."""


@hookspec
def lclr_run_end(run, interrupted):
    """The run stopped: at its last step, or by Ctrl-C when ``interrupted``."""
