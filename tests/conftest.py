"""Shared fixtures. Tests run on one thread: the machine is small and shared."""

from __future__ import annotations

import pytest
import torch

from lclr.registry import reset_registry

torch.set_num_threads(1)


@pytest.fixture
def fresh_registry(monkeypatch):
    """A registry loaded anew for this test, and forgotten after it."""
    monkeypatch.delenv("LCLR_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()


def tiny_config(**changes):
    """A run on the toy generator that takes a second or two."""
    from lclr.config import RunConfig

    base = dict(
        generator="toy",
        layer="conv1",
        direction="linear",
        k=3,
        batch_size=4,
        iterations=12,
        checkpoint_every=5,
        log_every=2,
        alpha=1.0,
    )
    base.update(changes)
    return RunConfig(**base)


def shapes_factors(n, seed=0):
    """``n`` factor sets of the shapes world, drawn from ``seed``."""
    from lclr_shapes.render import sample_factors

    return sample_factors(n, torch.Generator().manual_seed(seed))


class CountFeatures:
    """Wraps the toy generator's truncated forward to record batch sizes."""

    def __init__(self, generator):
        self.sizes = []
        real = generator.features

        def features(codes, layer):
            self.sizes.append((codes.shape[0], torch.is_grad_enabled()))
            return real(codes, layer)

        generator.features = features


def assert_same_gan(a, b):
    """Two GAN trainers hold equal G, D and G_ema, tensor for tensor (a
    resumed run against the one never stopped)."""
    for net in ("G", "D", "G_ema"):
        mine = getattr(a, net).state_dict()
        theirs = getattr(b, net).state_dict()
        for key in mine:
            assert torch.equal(mine[key], theirs[key]), f"{net}.{key} differs"
