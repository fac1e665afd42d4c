"""BigGAN-deep as an lclr :class:`~lclr.interfaces.Generator`.

Edits live in Z. A generator draws one class, chosen by index or name
(ImageNet's, or the weights' own ``class_names``), and one truncation psi:
codes are sampled from a normal truncated to [-2, 2] and scaled by psi, and
the batch norms use the statistics stored for psi. Codes are ``(N, D)``,
one z for every block, or ``(N, L, D)`` with one z for ``gen_z`` and one per
block, so an edit can go to chosen blocks only.
The targetable layers are the entries of the network's ``layers`` list:
every block and the self-attention, ``layers.0``, ``layers.1``, ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lclr.errors import CheckpointError
from lclr.interfaces import Generator, layer_index, random_stream

from .classes import IMAGENET_CLASSES, class_name, resolve_class
from .loading import (
    CONFIG_NAME,
    EMBEDDED_WEIGHTS,
    LAYOUT,
    WEIGHTS_NAME,
    load_biggan,
)
from .model import BigGAN, Block, layer_shapes
from .plugin import truncation_value

#: Codes are drawn from a standard normal cut at +-TRUNCATION_BOUND.
TRUNCATION_BOUND = 2.0


def truncated_normal(
    shape: tuple[int, ...],
    generator: torch.Generator,
    bound: float = TRUNCATION_BOUND,
) -> torch.Tensor:
    """Standard normal samples cut to [-bound, bound], by inverting the CDF.

    Works in float64 on ``generator``'s device and returns float32; the same
    generator state always gives the same samples.
    """
    lo = 0.5 * math.erfc(bound / math.sqrt(2.0))  # P(x < -bound)
    u = torch.rand(
        shape, generator=generator, dtype=torch.float64, device=generator.device
    )
    p = lo + u * (1.0 - 2.0 * lo)  # uniform on (Phi(-bound), Phi(bound))
    x = math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)
    return x.clamp(-bound, bound).float()


class BigGANGenerator(Generator):
    """A frozen BigGAN-deep for one class at one truncation psi.

    ``class_label`` is an index or a name: one of ``class_names`` when the
    weights name their classes, else an ImageNet WordNet id or name (for
    1000-class weights). ``truncation`` is psi in (0, 1].
    """

    def __init__(
        self,
        model: BigGAN,
        *,
        truncation: float = 0.4,
        class_label: int | str = 0,
        info: Mapping[str, Any] | None = None,
        class_names: Sequence[str] = (),
    ):
        super().__init__()
        self.truncation = truncation_value(truncation)
        self.model = model
        self.latent_dim = model.config.z_dim
        self.space = "z"
        self.num_codes = model.num_codes
        num_classes = model.config.num_classes
        self.class_names = tuple(class_names)
        self.class_index = resolve_class(class_label, num_classes, self.class_names)
        one_hot = F.one_hot(torch.tensor(self.class_index), num_classes).float()
        self.register_buffer("class_vector", one_hot, persistent=False)  # (C,)
        self.info = dict(info or {})
        self._names = model.layer_names()
        self._shapes = layer_shapes(model.config)
        self.requires_grad_(False)
        self.eval()

    # Frozen: train() never switches the network to training mode.
    def train(self, mode: bool = True):
        """Stay in eval mode whatever ``mode`` says (the generator is frozen)."""
        return super().train(False)

    # Layers --------------------------------------------------------------

    def layers(self) -> list[str]:
        """``layers.0``, ``layers.1``, ...: each block, and the attention."""
        return list(self._names)

    def _index(self, layer: str) -> int:
        return layer_index(self._names, layer, "biggan")

    def layer_shape(self, layer: str) -> tuple[int, ...]:
        """``(C, H, W)`` of a block's output."""
        return self._shapes[self._index(layer)]

    def code_layers(self) -> list[str]:
        """``gen_z``, then the block that reads each further code."""
        return self.model.code_names()

    def describe(self) -> dict[str, Any]:
        """Resolution, class and truncation, for run metadata."""
        facts = {
            "resolution": self.model.config.output_dim,
            "truncation": self.truncation,
            "class_index": self.class_index,
        }
        if self.class_names:
            facts["class_name"] = self.class_names[self.class_index]
        elif self.model.config.num_classes == IMAGENET_CLASSES:
            facts["class_name"] = class_name(self.class_index)
        facts.update(self.info)
        return facts

    def latent_weights(self, codes: Sequence[int] | None = None) -> torch.Tensor:
        """``(M, D)`` weights that read z, for SeFa: the columns for z of
        ``gen_z`` (code 0) and of each block's class-conditional batch-norm
        gains and biases (codes 1...), for the codes in ``codes`` (all when
        None)."""
        g = self.model.generator
        readers = [[g.gen_z]]
        for layer in g.layers:
            if isinstance(layer, Block):  # not the attention
                norms = (layer.bn_0, layer.bn_1, layer.bn_2, layer.bn_3)
                readers.append([lin for bn in norms for lin in (bn.scale, bn.offset)])
        chosen = range(self.num_codes) if codes is None else codes
        d = self.latent_dim
        return torch.cat([lin.weight[:, :d] for i in chosen for lin in readers[i]])

    # Sampling ------------------------------------------------------------

    def sample_latent(
        self,
        n: int,
        seed: int | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(N, D)`` codes: truncated normal in [-2, 2], times psi."""
        generator = random_stream(seed, generator)
        z = truncated_normal((n, self.latent_dim), generator)
        return (self.truncation * z).to(self.class_vector.device)

    def _check(self, codes: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` one-hot classes for ``codes``, after checking its shape."""
        d, L = self.latent_dim, self.num_codes
        if (
            codes.ndim not in (2, 3)
            or codes.shape[-1] != d
            or (codes.ndim == 3 and codes.shape[1] != L)
        ):
            raise ValueError(
                f"codes must be (N, {d}) or (N, {L}, {d}); got {tuple(codes.shape)}"
            )
        return self.class_vector.expand(codes.shape[0], -1)

    def features(self, codes: torch.Tensor, layer: str) -> torch.Tensor:
        """``(N, C, H, W)`` output of ``layer``; nothing after it runs."""
        index = self._index(layer)
        classes = self._check(codes)
        return self.model(codes, classes, self.truncation, stop=index)

    def synthesize(self, codes: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` images in ``[0, 1]``."""
        img = self.model(codes, self._check(codes), self.truncation)
        return ((img + 1) / 2).clamp(0, 1)


def load_generator(
    weights: str | os.PathLike | None,
    *,
    truncation: float = 0.4,
    class_label: int | str = 0,
) -> BigGANGenerator:
    """A :class:`BigGANGenerator` from a weights folder.

    ``weights=None`` takes the embedded default (:data:`EMBEDDED_WEIGHTS`,
    the shapes world's generator) when it is installed, and is otherwise an
    error that says what to pass.
    """
    if weights is None:
        if not all(
            (EMBEDDED_WEIGHTS / n).is_file() for n in (CONFIG_NAME, WEIGHTS_NAME)
        ):
            raise CheckpointError(
                "biggan has no embedded default weights yet; "
                f"pass --weights with {LAYOUT}"
            )
        weights = EMBEDDED_WEIGHTS
    loaded = load_biggan(weights)
    return BigGANGenerator(
        loaded.model,
        truncation=truncation,
        class_label=class_label,
        info=loaded.info,
        class_names=loaded.class_names,
    )
