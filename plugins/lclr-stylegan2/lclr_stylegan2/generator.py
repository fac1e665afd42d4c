"""StyleGAN2 as an lclr :class:`~lclr.interfaces.Generator`.

Edits live in W (default) or Z. Codes are ``(N, D)``, one w for every layer,
or ``(N, L, D)`` in W+ (L = ``num_codes``). The targetable layers are the
outputs of the styled convolutions, named as in the checkpoint: ``conv1``
(4 px), then ``convs.0``, ``convs.1``, ... (two per resolution, 8 px up).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lclr.errors import CheckpointError, ConfigError, choices, close_matches
from lclr.interfaces import Generator, layer_index, random_stream, weights_sha256

from .loading import EMBEDDED_WEIGHTS, architecture, load_checkpoint
from .model import StyleGAN2, truncate

log = logging.getLogger(__name__)

MEAN_LATENT_SAMPLES = 4096
MEAN_LATENT_SEED = 0


class StyleGAN2Generator(Generator):
    """A frozen StyleGAN2 with its truncation centre, noise and class.

    ``class_label`` is an index, a name from ``class_names``, or ``None`` for
    a random class per sample (conditional networks only). ``truncation`` is
    psi: sampled w are pulled towards ``latent_avg``.

    ``truncation_cutoff`` (NVIDIA's option) truncates only the first that
    many per-layer codes. Then sampled w are left untruncated, and the
    truncation is applied to those layers when codes are synthesised, so an
    edit made in W is scaled by psi there as well.
    """

    def __init__(
        self,
        model: StyleGAN2,
        latent_avg: torch.Tensor | None = None,
        *,
        space: str = "w",
        truncation: float = 1.0,
        class_label: int | str | None = None,
        class_names: Sequence[str] | None = None,
        info: Mapping[str, Any] | None = None,
        truncation_cutoff: int | None = None,
    ):
        super().__init__()
        if space not in ("w", "z"):
            raise ConfigError(f"space must be 'w' or 'z', got {space!r}")
        if not 0.0 < truncation <= 1.0:
            raise ConfigError(f"truncation must be in (0, 1], got {truncation}")
        if truncation_cutoff is not None and not truncation_cutoff > 0:
            raise ConfigError(
                f"truncation_cutoff must be >= 1 or unset, got {truncation_cutoff}"
            )
        self.model = model
        self.latent_dim = model.z_dim if space == "z" else model.style_dim
        self.space = space
        self.num_codes = model.n_latent
        self.truncation = float(truncation)
        cutoff = truncation_cutoff
        self.cutoff = None if cutoff is None or cutoff >= model.n_latent else cutoff
        self.class_names = list(class_names or [])
        self.class_index = self._class_index(class_label)
        if space == "z" and model.c_dim > 0 and self.class_index is None:
            raise ConfigError(
                "space 'z' with a class-conditional StyleGAN2 needs a fixed "
                "class: set class_label, or use space 'w'"
            )
        self.info = dict(info or {})
        if latent_avg is None:
            gen = torch.Generator().manual_seed(MEAN_LATENT_SEED)
            latent_avg = model.mean_latent(MEAN_LATENT_SAMPLES, generator=gen)
            log.warning(
                "%s has no average w (latent_avg); estimated from %d samples "
                "of its mapping network (seed %d)",
                (info or {}).get("weights", "the checkpoint"),
                MEAN_LATENT_SAMPLES,
                MEAN_LATENT_SEED,
            )
        self.register_buffer("latent_avg", latent_avg.detach().reshape(-1).clone())
        self._names = [name for name, _ in model.styled_convs()]
        self.requires_grad_(False)
        self.eval()

    # Frozen: train() never switches the network to training mode.
    def train(self, mode: bool = True):
        """Stay in eval mode whatever ``mode`` says (the generator is frozen)."""
        return super().train(False)

    def _class_index(self, label: int | str | None) -> int | None:
        """Validated class index for ``label``; None for a random class."""
        c_dim = self.model.c_dim
        if label is None:
            return None
        if c_dim == 0:
            raise ConfigError(
                f"class_label {label!r} given, but these StyleGAN2 weights are "
                "unconditional; drop class_label"
            )
        names = self.class_names
        if isinstance(label, str) and names:
            if label in names:
                return names.index(label)
            # "Heart" or " heart" for "heart", when only one name fits
            folded = [name.casefold() for name in names]
            key = label.strip().casefold()
            if folded.count(key) == 1:
                return folded.index(key)
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        if isinstance(label, int) and 0 <= label < c_dim:
            return label
        known = choices(names) if names else f"an index 0..{c_dim - 1}"
        near = close_matches(str(label), names or [])
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise ConfigError(f"unknown class {label!r}; {hint}use {known}")

    # Layers --------------------------------------------------------------

    def layers(self) -> list[str]:
        """``conv1``, ``convs.0``, ``convs.1``, ...: styled conv outputs."""
        return list(self._names)

    def _index(self, layer: str) -> int:
        return layer_index(self._names, layer, "stylegan2")

    def layer_shape(self, layer: str) -> tuple[int, ...]:
        """``(C, H, W)`` of a styled conv output."""
        i = self._index(layer)
        res = 2 ** ((i + 5) // 2)
        return (self.model.channels[res], res, res)

    def code_layers(self) -> list[str]:
        """Which modules read each of the L codes, e.g. ``to_rgb1+convs.0``."""
        labels = [[] for _ in range(self.num_codes)]
        for i, name in enumerate(self._names):
            labels[i].append(name)
        labels[1].insert(0, "to_rgb1")
        for j in range(len(self.model.to_rgbs)):
            labels[2 * j + 3].insert(0, f"to_rgbs.{j}")
        return ["+".join(parts) for parts in labels]

    def describe(self) -> dict[str, Any]:
        """Resolution, architecture and sampling settings, for run metadata."""
        facts = {
            "resolution": self.model.size,
            "arch": architecture(self.model),
            "space": self.space,
            "truncation": self.truncation,
            "class_index": self.class_index,
        }
        if self.cutoff is not None:
            facts["truncation_cutoff"] = self.cutoff
        if self.class_names:
            facts["class_names"] = self.class_names
        facts.update(self.info)
        return facts

    def latent_weights(self, codes: Sequence[int] | None = None) -> torch.Tensor | None:
        """``(M, D)`` style weights that read the codes in ``codes`` (all
        when None), for SeFa; None in Z, where the mapping reads z first.

        As in the SeFa authors' release, code ``i`` is read by the affine of
        styled conv ``i``, and the last code (which no conv reads) by the
        affine of the final to-RGB layer; the other to-RGB affines are left
        out.
        """
        if self.space != "w":
            return None
        readers = [conv.conv.modulation for _, conv in self.model.styled_convs()]
        last = self.model.to_rgbs[-1] if len(self.model.to_rgbs) else self.model.to_rgb1
        readers.append(last.conv.modulation)
        chosen = range(self.num_codes) if codes is None else codes
        return torch.cat([readers[i].weight * readers[i].scale for i in chosen])

    # Sampling ------------------------------------------------------------

    def _classes(self, n: int, gen: torch.Generator) -> torch.Tensor | None:
        """``(N, c_dim)`` one-hot labels, or None for an unconditional net."""
        c_dim = self.model.c_dim
        if c_dim == 0:
            return None
        if self.class_index is None:
            idx = torch.randint(c_dim, (n,), generator=gen, device=gen.device)
        else:
            idx = torch.full((n,), self.class_index, device=gen.device)
        return F.one_hot(idx, c_dim).float().to(self.latent_avg.device)

    def _truncate(self, w: torch.Tensor) -> torch.Tensor:
        """Pull sampled w towards ``latent_avg`` by psi (all layers)."""
        if self.truncation == 1.0 or self.cutoff is not None:
            return w
        return self.latent_avg + self.truncation * (w - self.latent_avg)

    def _truncate_layers(self, ws: torch.Tensor) -> torch.Tensor:
        """With a cutoff: truncate the first codes of ``ws`` -> (N, L, D)."""
        if self.truncation == 1.0 or self.cutoff is None:
            return ws
        return truncate(ws, self.latent_avg, self.truncation, self.cutoff, self.model)

    def sample_latent(
        self,
        n: int,
        seed: int | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(N, D)`` codes: z, or truncated w = mapping(z); no gradient."""
        generator = random_stream(seed, generator)
        device = self.latent_avg.device
        # z has the mapping's input width, which may differ from w's
        z_dim = self.model.z_dim
        z = torch.randn(n, z_dim, generator=generator, device=generator.device)
        z = z.to(device)
        if self.space == "z":
            return z
        c = self._classes(n, generator)
        with torch.no_grad():
            return self._truncate(self.model.mapping(z, c))

    def _to_ws(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes in the working space -> ``(N, D)`` or ``(N, L, D)`` w."""
        if codes.ndim not in (2, 3) or codes.shape[-1] != self.latent_dim:
            raise ValueError(
                f"codes must be (N, {self.latent_dim}) or "
                f"(N, {self.num_codes}, {self.latent_dim}); got {tuple(codes.shape)}"
            )
        if self.space == "w":
            return self._truncate_layers(codes)
        flat = codes.reshape(-1, self.latent_dim)  # (N*L, z_dim) z
        c = None
        if self.model.c_dim > 0:
            idx = torch.full((flat.shape[0],), self.class_index, device=flat.device)
            c = F.one_hot(idx, self.model.c_dim).float()
        w = self._truncate(self.model.mapping(flat, c))
        w = w.reshape(*codes.shape[:-1], self.model.style_dim)
        return self._truncate_layers(w)

    def features(self, codes: torch.Tensor, layer: str) -> torch.Tensor:
        """``(N, C, H, W)`` output of ``layer``; nothing after it runs."""
        index = self._index(layer)
        return self.model.features(self._to_ws(codes), index, noise_mode="const")

    def synthesize(self, codes: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` images in ``[0, 1]``."""
        img = self.model.synthesis(self._to_ws(codes), noise_mode="const")
        return ((img + 1) / 2).clamp(0, 1)


def load_generator(
    weights: str | os.PathLike | None = None,
    *,
    space: str = "w",
    truncation: float = 1.0,
    class_label: int | str | None = None,
    noise_seed: int = 0,
    arch: Mapping[str, Any] | None = None,
    truncation_cutoff: int | None = None,
) -> StyleGAN2Generator:
    """A :class:`StyleGAN2Generator` from any weights file, or the embedded one.

    ``weights`` is any file :func:`~.loading.read_weights` reads (the port's
    ``.pt``, NVIDIA's ``.pkl``, lclr's ``.safetensors``...). ``arch`` states
    parts of the architecture (size, style_dim, n_mlp, channel_multiplier,
    c_dim, conv_clamp) instead of taking them from the file.
    """
    path = EMBEDDED_WEIGHTS if weights is None else weights
    if weights is None and not EMBEDDED_WEIGHTS.is_file():
        raise CheckpointError(
            f"the embedded stylegan2 weights ({EMBEDDED_WEIGHTS.name}) are "
            "missing from this install; pass --weights with a checkpoint"
        )
    # hashed before loading (a missing file gets the loader's own error)
    digest = weights_sha256(path) if os.path.isfile(path) else None
    loaded = load_checkpoint(path, arch=arch, noise_seed=noise_seed)
    info = {"weights": "embedded" if weights is None else str(path), "sha256": digest}
    if loaded.meta.get("source"):
        info["source"] = loaded.meta["source"]
    return StyleGAN2Generator(
        loaded.model,
        loaded.latent_avg,
        space=space,
        truncation=truncation,
        class_label=class_label,
        class_names=loaded.meta.get("class_names"),
        info=info,
        truncation_cutoff=truncation_cutoff,
    )
