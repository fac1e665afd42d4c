"""What a plugin's components must provide. Shapes, not implementations.

A plugin subclasses these (or quacks like them); the core relies on nothing
else. Tensor shapes are named in the docstrings: N samples, K directions,
D latent size, L per-layer codes, F flattened feature size.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lclr.errors import UnknownComponentError


def weights_sha256(*files) -> str:
    """The SHA-256 of the bytes of ``files``, read in order: a generator
    puts it in :meth:`Generator.describe` as ``sha256``, so that a run can
    tell when the weights it was trained on have been replaced."""
    import hashlib

    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def layer_index(layers: Sequence[str], layer: str, owner: str) -> int:
    """Forward-order index of ``layer`` among ``owner``'s ``layers``, or one
    clear error that lists them."""
    names = list(layers)
    if layer not in names:
        raise UnknownComponentError(
            f"unknown layer '{layer}'; {owner} has: {', '.join(names)}"
        )
    return names.index(layer)


def random_stream(
    seed: int | None = None, generator: torch.Generator | None = None
) -> torch.Generator:
    """The stream :meth:`Generator.sample_latent` draws from: ``generator``
    when given, else a fresh one seeded with ``seed`` (or from the OS when
    ``seed`` is None); never the global RNG state."""
    if generator is not None:
        return generator
    stream = torch.Generator()
    if seed is None:
        stream.seed()
    else:
        stream.manual_seed(seed)
    return stream


class Generator(nn.Module, abc.ABC):
    """A frozen, pre-trained generator.

    Attributes a subclass sets in ``__init__``:

    - ``latent_dim``: D, the size of one code in the working space.
    - ``space``: ``"z"`` or ``"w"``, the space edits live in.
    - ``num_codes``: L, how many per-layer codes the synthesis takes (W+ for
      StyleGAN2, per-block z for BigGAN); 1 when it takes a single code.
    """

    latent_dim: int
    space: str = "z"
    num_codes: int = 1

    @abc.abstractmethod
    def layers(self) -> list[str]:
        """Names of the targetable layers, in forward order."""

    @abc.abstractmethod
    def layer_shape(self, layer: str) -> tuple[int, ...]:
        """Per-sample output shape of ``layer``, e.g. ``(C, H, W)``."""

    @abc.abstractmethod
    def sample_latent(
        self,
        n: int,
        seed: int | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(N, D)`` codes in the working space, reproducible for a seed.

        Uses ``generator`` when given, else a fresh ``torch.Generator`` seeded
        with ``seed``; never the global RNG state. Mapping to W, truncation and
        class conditioning happen here, without gradient.
        """

    @abc.abstractmethod
    def features(self, codes: torch.Tensor, layer: str) -> torch.Tensor:
        """Truncated forward: the ``(N, ...)`` activation at ``layer``.

        ``codes`` is ``(N, D)`` (the same code for every layer) or
        ``(N, L, D)`` (one code per layer). Computes nothing past ``layer``.
        """

    @abc.abstractmethod
    def synthesize(self, codes: torch.Tensor) -> torch.Tensor:
        """Full forward: ``(N, 3, H, W)`` images with values in ``[0, 1]``."""

    def default_layer(self) -> str:
        """The layer a run targets when the user names none."""
        names = self.layers()
        return names[len(names) // 2]

    def code_layers(self) -> list[str]:
        """A short label for each of the L per-layer codes (for help texts)."""
        return [str(i) for i in range(self.num_codes)]

    def describe(self) -> dict[str, Any]:
        """Facts recorded in a run's metadata (resolution, provenance...)."""
        return {}

    def latent_weights(self, codes: Sequence[int] | None = None) -> torch.Tensor | None:
        """``(M, D)``: the weight rows that first act on a working-space code,
        stacked, for the per-layer codes in ``codes`` (None: all of them).

        Closed-form methods factorise it (the ``sefa`` direction model).
        None, the default, when the network has no such linear first step.
        """
        return None


class DirectionModel(nn.Module, abc.ABC):
    """K trainable edit directions in a latent space of size D.

    Every edit has norm exactly ``alpha``: ``edit(z) = z + alpha * u / |u|``.
    """

    k: int
    latent_dim: int
    closed_form: bool = False
    """True for a model found in one go, not trained (GANSpace, SeFa): a run
    builds it, calls ``fit(generator, layer=, sample=, edit_layers=)`` once
    and saves it at step 0; ``sample(n)`` draws ``(n, D)`` codes from the
    run's seed."""

    @abc.abstractmethod
    def forward(self, codes: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        """All K edits of a ``(N, D)`` batch in one call: ``(K, N, D)``.

        ``alpha`` is a float, or a ``(N,)`` or ``(K, N)`` tensor of step sizes
        (the trainer samples these when the user asks for a range).
        """

    @abc.abstractmethod
    def edit(
        self, codes: torch.Tensor, k: int, alpha: float | torch.Tensor
    ) -> torch.Tensor:
        """The ``(N, D)`` codes edited by direction ``k`` alone; for rendering.

        A negative ``alpha`` moves the other way.
        """

    def export(self) -> dict[str, torch.Tensor]:
        """What it learnt, as named tensors for a safetensors file."""
        return {
            name: p.detach().cpu().contiguous() for name, p in self.state_dict().items()
        }


class Objective(abc.ABC):
    """A loss on feature changes."""

    @abc.abstractmethod
    def __call__(self, changes: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``changes`` is ``(K, N, F)``; returns ``(loss, metrics)``.

        ``metrics`` is a dict of plain floats, e.g. ``{"acc": 0.93}``.
        """

    def transform_features(self, features: torch.Tensor) -> torch.Tensor:
        """Map ``(M, F)`` raw features before differences are taken.

        The identity by default; the authors' variant normalises here.
        """
        return features

    def setup(self, feature_dim: int, device: torch.device | str | None = None):
        """Called once before training with F, the flattened feature size,
        so a projector head can be built. Nothing to do by default."""
        return None

    def parameters(self) -> Sequence[torch.nn.Parameter]:
        """Trainable parameters of the objective (a projector head), if any."""
        return []

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must keep of the objective (empty by default)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        return None


class Evaluator(abc.ABC):
    """Scores a trained run against something outside the loss."""

    @abc.abstractmethod
    def evaluate(self, run: Any, out_dir: Any) -> dict[str, Any]:
        """Evaluate ``run`` (from :func:`lclr.load_run`); write files into
        ``out_dir``; return a JSON-able summary with a float ``score``."""
