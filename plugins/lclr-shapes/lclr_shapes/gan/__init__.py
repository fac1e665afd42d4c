"""The recipe that trains lclr's embedded shapes generator.

A small class-conditional StyleGAN2 (the lclr-stylegan2 architecture), or
with ``arch="biggan"`` a BigGAN-deep (lclr-biggan's), trained adversarially
on :mod:`lclr_shapes.render` images on CPU:

- :mod:`~lclr_shapes.gan.config`: :class:`GanConfig`, the recipe's settings.
- :mod:`~lclr_shapes.gan.networks`: the residual, projection-conditional
  discriminator.
- :mod:`~lclr_shapes.gan.augment`: differentiable augmentation.
- :mod:`~lclr_shapes.gan.train`: the training loop, checkpoints, resume.
- :mod:`~lclr_shapes.gan.monitor`: sample grids and a collapse check.
- :mod:`~lclr_shapes.gan.biggan`: building, sampling and exporting a
  BigGAN-deep G.
- :mod:`~lclr_shapes.gan.export`: the EMA generator as its plugin's weights.
- :mod:`~lclr_shapes.gan.cli`: the ``train-gan`` and ``export-gan`` commands.
"""

from lclr_shapes.gan.config import GanConfig

__all__ = ["GanConfig"]
