"""GANSpace and SeFa: edit directions found in closed form, as baselines.

Neither is trained. A run with ``--direction ganspace`` or ``--direction
sefa`` builds the model, calls :meth:`fit` once, and writes the same run
folder as a LatentCLR run (at step 0), so that ``lclr render``, ``lclr
eval`` and :func:`lclr.load_run` treat all of them alike. Both are global
directions: ``delta z = alpha * theta_k / |theta_k|``, whatever z.

- GANSpace (Härkönen et al., NeurIPS 2020): principal components. In a
  ``w`` working space, of sampled codes (the authors' choice for
  StyleGAN); in a ``z`` space, of the activations at the run's target
  layer, made latent directions by regressing the codes on each
  component's coordinates (their choice for BigGAN).
- SeFa (Shen & Zhou, CVPR 2021): the top eigenvectors of ``A^T A``, where
  ``A`` stacks the weight rows that first act on a working-space code
  (:meth:`lclr.interfaces.Generator.latent_weights`), each row scaled to
  unit length as the authors' release does.

Directions come sorted by their eigenvalue (the variance they explain, or
how much the weights stretch them), largest first; ``eigenvalues`` keeps
those values. An eigenvector's sign is arbitrary, so each is turned to
make its largest entry positive: the same seed gives the same file.
"""

from __future__ import annotations

import torch

from lclr.errors import ConfigError
from lclr_baselines.options import GanSpaceOptions, SeFaOptions
from lclr_directions.models import GlobalDirections

__all__ = ["GanSpaceDirections", "SeFaDirections", "top_eigenvectors"]

CHUNK = 256
"""Codes per truncated forward when GANSpace collects activations."""


def top_eigenvectors(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest eigenvalues of a symmetric ``matrix`` and their
    unit eigenvectors as rows ``(k, D)``, in float64, largest first, each
    turned so that its largest entry is positive."""
    values, vectors = torch.linalg.eigh(matrix.double())  # ascending
    values = values.flip(0)[:k]
    rows = vectors.flip(1)[:, :k].T.contiguous()  # (k, D)
    return values, _fix_signs(rows)


def _fix_signs(rows: torch.Tensor) -> torch.Tensor:
    biggest = rows.abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(rows.gather(1, biggest))
    return rows * torch.where(sign == 0, torch.ones_like(sign), sign)


class _ClosedForm(GlobalDirections):
    """K fixed directions ``theta``, set by :meth:`fit`, never trained."""

    closed_form = True
    name = ""

    def __init__(self, k: int, latent_dim: int, options):
        super().__init__(k, latent_dim)
        if k > latent_dim:
            raise ConfigError(
                f"{self.name} finds at most D={latent_dim} directions in this "
                f"latent space; pass -k {latent_dim} or fewer"
            )
        self.options = options
        self.theta.requires_grad_(False)
        self.register_buffer("eigenvalues", torch.zeros(k, dtype=torch.float64))

    def fit(self, generator, *, layer: str, sample, edit_layers=None) -> None:
        """Find the directions for ``generator``.

        ``layer`` is the run's target layer, ``sample(n)`` draws ``(n, D)``
        codes from the run's seed, and ``edit_layers`` are the per-layer
        codes the run edits (None: all).
        """
        raise NotImplementedError

    def _store(self, values: torch.Tensor, rows: torch.Tensor) -> None:
        rows = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        with torch.no_grad():
            self.theta.copy_(rows.to(self.theta))
            self.eigenvalues.copy_(values)


class GanSpaceDirections(_ClosedForm):
    """GANSpace: the top K principal components, in the working space.

    In a ``w`` space the components of sampled codes; in a ``z`` space
    those of the target layer's activations, each turned into a latent
    direction by regressing the codes on its coordinates.
    """

    name = "ganspace"

    def __init__(self, k: int, latent_dim: int, options: GanSpaceOptions | None = None):
        super().__init__(k, latent_dim, options or GanSpaceOptions())

    @torch.no_grad()
    def fit(self, generator, *, layer: str, sample, edit_layers=None) -> None:
        n = self.options.samples
        if n <= self.k:
            raise ConfigError(
                f"ganspace needs more samples than directions; set samples "
                f"above K={self.k} (it is {n})"
            )
        codes = sample(n)  # (N, D)
        z = codes.double().cpu()
        z = z - z.mean(dim=0)
        if generator.space == "w":
            values, rows = top_eigenvectors(z.T @ z / (n - 1), self.k)
        else:
            values, rows = self._regressed(generator, layer, codes, z)
        self._store(values, rows)

    def _regressed(self, generator, layer, codes, z):
        """Components of ``layer``'s activations, as directions in z."""
        feats = torch.cat(
            [
                generator.features(c, layer).flatten(1).float().cpu()
                for c in codes.split(CHUNK)
            ]
        )  # (N, F)
        feats = feats - feats.mean(dim=0)
        # the N x N Gram matrix has the same top eigenvalues as the F x F
        # covariance, and its eigenvectors are the components' coordinates;
        # summed in float64 a slice of features at a time
        n = len(codes)
        gram = torch.zeros(n, n, dtype=torch.float64)
        for part in feats.split(CHUNK * 16, dim=1):
            part = part.double()
            gram += part @ part.T
        values, coords = top_eigenvectors(gram, self.k)  # coords (K, N), unit rows
        # least squares of z on each coordinate: the coordinates are
        # orthonormal, so it is their dot product with z (scale aside)
        return values / (n - 1), _fix_signs(coords @ z)


class SeFaDirections(_ClosedForm):
    """SeFa: the top K eigenvectors of ``A^T A`` for the weights ``A`` that
    first read the (edited) per-layer codes, rows at unit length."""

    name = "sefa"

    def __init__(self, k: int, latent_dim: int, options: SeFaOptions | None = None):
        super().__init__(k, latent_dim, options or SeFaOptions())

    @torch.no_grad()
    def fit(self, generator, *, layer: str, sample, edit_layers=None) -> None:
        weights = generator.latent_weights(edit_layers)
        if weights is None:
            raise ConfigError(
                "sefa factorises the weights that first read a code, and this "
                "generator has none in its working space (StyleGAN2 has them in "
                "W, not Z; see Generator.latent_weights); use --direction ganspace"
            )
        a = weights.detach().double().cpu()
        if a.ndim != 2 or a.shape[1] != self.latent_dim:
            raise ValueError(
                f"latent_weights must be (M, {self.latent_dim}), got {tuple(a.shape)}"
            )
        a = a / torch.linalg.vector_norm(a, dim=1, keepdim=True).clamp_min(1e-30)
        values, rows = top_eigenvectors(a.T @ a, self.k)
        rank = int((values > values[0] * 1e-9).sum())
        if rank < self.k:
            # past the weights' rank an eigenvector changes nothing, and
            # which one is returned is up to rounding
            raise ConfigError(
                f"sefa finds at most {rank} directions in the weights that read "
                f"the chosen codes ({a.shape[0]} rows); pass -k {rank} or fewer, "
                "or edit more codes"
            )
        self._store(values, rows)
