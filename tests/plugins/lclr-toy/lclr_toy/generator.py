"""A toy generator: three per-layer codes, three targetable layers, 8×8 RGB."""

from __future__ import annotations

import torch
from torch import nn

from lclr.errors import CheckpointError
from lclr.interfaces import Generator


class ToyGenerator(Generator):
    """z (D) → fc (W·4·4) → conv1 (W×4×4) → conv2 (W×8×8) → RGB 8×8.

    Code i of the (N, 3, D) per-layer codes shifts layer i, so edits can go
    to chosen layers only, as with StyleGAN2's W+.
    """

    space = "z"
    num_codes = 3

    def __init__(self, latent_dim: int = 8, width: int = 8):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        self.fc = nn.Linear(latent_dim, width * 16)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.rgb = nn.Conv2d(width, 3, 1)
        self.styles = nn.ModuleList(nn.Linear(latent_dim, width) for _ in range(2))
        self._shapes = {
            "fc": (width, 4, 4),
            "conv1": (width, 4, 4),
            "conv2": (width, 8, 8),
        }

    @classmethod
    def create(cls, weights, options) -> ToyGenerator:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            model = cls(options.latent_dim, options.width)
        if weights is not None:
            try:
                state = torch.load(weights, map_location="cpu", weights_only=True)
                model.load_state_dict(state)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0][:160]
                raise CheckpointError(
                    f"{weights} is not a toy checkpoint that fits ({first}); "
                    "pass a file saved from ToyGenerator.state_dict()"
                ) from None
        return model.eval().requires_grad_(False)

    def layers(self) -> list[str]:
        return list(self._shapes)

    def layer_shape(self, layer: str) -> tuple[int, ...]:
        return self._shapes[layer]

    def sample_latent(self, n, seed=None, *, generator=None):
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        return torch.randn(n, self.latent_dim, generator=generator)

    def _per_layer(self, codes):
        if codes.dim() == 2:
            return [codes] * self.num_codes
        return list(codes.unbind(1))

    def _run(self, codes, stop: str | None):
        c = self._per_layer(codes)
        x = self.fc(c[0]).view(-1, self.width, 4, 4)  # (N, W, 4, 4)
        if stop == "fc":
            return x
        x = torch.tanh(self.conv1(x) + self.styles[0](c[1])[:, :, None, None])
        if stop == "conv1":
            return x
        x = nn.functional.interpolate(x, scale_factor=2)  # (N, W, 8, 8)
        x = torch.tanh(self.conv2(x) + self.styles[1](c[2])[:, :, None, None])
        if stop == "conv2":
            return x
        return torch.sigmoid(self.rgb(x))

    def features(self, codes, layer):
        if layer not in self._shapes:
            raise KeyError(layer)
        return self._run(codes, layer)

    def synthesize(self, codes):
        return self._run(codes, None)
