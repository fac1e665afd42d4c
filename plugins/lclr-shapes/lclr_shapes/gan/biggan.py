"""The BigGAN-deep arch of the recipe: build, sample and export G.

The generator is lclr-biggan's own network with spectral-norm hooks (see
:mod:`lclr_biggan.training`), 32 px, one class per shape. It is trained as
BigGAN trains: standard normal z (the truncated normal is for inference
only), the same z for every block, batch norms on batch statistics, u and v
moved by one power iteration per forward. Until the export measures the
stored statistics, G is sampled with batch statistics as well.

lclr-biggan is imported here only, when a BigGAN run asks for it.
"""

from __future__ import annotations

import torch

from lclr_shapes import render
from lclr_shapes.gan.config import GanConfig, blocks_text


def biggan_config(config: GanConfig):
    """The :class:`~lclr_biggan.model.BigGANConfig` of a run's generator."""
    from lclr_biggan.model import BigGANConfig, check_config

    arch = BigGANConfig(
        output_dim=config.size,
        z_dim=config.style_dim,
        class_embed_dim=config.style_dim,
        channel_width=config.biggan_width,
        num_classes=len(render.SHAPES),
        layers=config.biggan_blocks,
        attention_layer_position=config.biggan_attention,
    )
    problems = check_config(arch)
    if problems:
        raise ValueError(
            f"these BigGAN-deep settings do not fit: {problems[0]} (biggan_blocks "
            f"{blocks_text(config.biggan_blocks)}, biggan_attention "
            f"{config.biggan_attention}, biggan_width {config.biggan_width})"
        )
    return arch


def build(config: GanConfig):
    """A freshly initialised, trainable BigGAN-deep for ``config``."""
    from lclr_biggan.training import trainable_biggan

    return trainable_biggan(biggan_config(config))


def generate(G, n: int, c: torch.Tensor, gen: torch.Generator):
    """Images from standard normal z: ``(img, z, z)``, the layout of
    :meth:`~lclr_shapes.gan.train.Trainer.generate`."""
    z = torch.randn(n, G.config.z_dim, generator=gen)
    return G(z, c, 1.0), z, z  # psi is unused on batch statistics


@torch.no_grad()
def sample(G, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] on batch statistics; changes nothing in ``G``."""
    from lclr_biggan.training import batch_statistics

    with batch_statistics(G):
        return G(z, c, 1.0)


def export_weights(G, folder):
    """Settle u and v, measure the per-psi statistics and save ``G`` (a
    trained EMA generator) as a weights folder; returns the folder."""
    from lclr_biggan.training import (
        converge_spectral_norm,
        measure_statistics,
        save_biggan,
    )

    converge_spectral_norm(G)
    measure_statistics(G)
    return save_biggan(G, folder, class_names=render.SHAPES)


def default_destination():
    """lclr-biggan's weights folder, where ``shapes32`` is the default."""
    from lclr_biggan.loading import EMBEDDED_WEIGHTS

    return EMBEDDED_WEIGHTS.parent
