"""Adversarial training of a small class-conditional GAN on shapes.

The generator is a StyleGAN2 (``arch="stylegan2"``, the default) or a
BigGAN-deep (``arch="biggan"``, see :mod:`lclr_shapes.gan.biggan`); the
discriminator, losses, augmentation, moving average and checkpoints are the
same for both.

The loop follows StyleGAN2-ADA's phases, one step at a time: a D step on
real and generated images, a lazy R1 step every ``r1_interval`` steps, a G
step (with an optional lazy path-length step) and an update of G's moving
average. Every random draw comes from a seeded ``torch.Generator`` (or
the global RNG, for synthesis noise), and all of their states are saved
in the checkpoint, so a resumed run continues exactly where it stopped.

Run it with ``python -m lclr_shapes.gan.train --out DIR`` or
``lclr shapes train-gan``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lclr.errors import CheckpointError, LclrError, RunFolderError
from lclr.runfolder import save_state
from lclr_shapes import render
from lclr_shapes.gan.augment import augment
from lclr_shapes.gan.config import GanConfig
from lclr_shapes.gan.features import (
    FeatureHeads,
    backbone_features,
    render_distance,
    render_target,
)
from lclr_shapes.gan.networks import Discriminator
from lclr_shapes.predictor import FactorPredictor, train_predictor
from lclr_stylegan2.model import StyleGAN2

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
"""Name of the training state inside a run folder."""
COMMAND = "python -m lclr_shapes.gan.train"
"""How the messages that say how to resume or train spell the training command."""
LOG = "train.log"
"""Name of the log file the command line writes into a run folder."""


def build_generator(config: GanConfig) -> nn.Module:
    """The generator a config describes, freshly initialised."""
    if config.arch == "biggan":
        from lclr_shapes.gan import biggan

        return biggan.build(config)
    return StyleGAN2(
        config.size,
        style_dim=config.style_dim,
        n_mlp=config.n_mlp,
        channels=config.g_channels,
        c_dim=len(render.SHAPES) if config.conditional else 0,
        lr_mlp=config.lr_mlp,
    )


def channels_last_(net: nn.Module) -> nn.Module:
    """Store ``net``'s 4-D parameters and buffers channels-last, in place.

    oneDNN's convolutions run on that layout natively; on this recipe's
    small convolutions it makes a CPU training step about 7 % faster. The
    values are the same; only sums may round differently. ``load_state_dict``
    copies into the tensors as they are, so the layout survives a resume.
    """
    for t in (*net.parameters(), *net.buffers()):
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
    return net


def mode_seeking_ratio(img: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """How far apart pairs ``(i, i + N/2)`` of images are, per unit of z.

    The mode-seeking term of MSGAN (Mao et al., 2019): mean absolute
    image difference over mean absolute latent difference. A generator
    that ignores z for some factor (every sample the same hue, say) has a
    small ratio; G's loss adds ``weight / ratio``.
    """
    h = img.shape[0] // 2
    d_img = (img[:h] - img[h : 2 * h]).abs().mean()
    d_z = (z[:h] - z[h : 2 * h]).abs().mean()
    return d_img / d_z


class Trainer:
    """The networks, optimisers and random streams of one run.

    ``step`` counts finished steps, ``nimg`` real images shown to D,
    ``elapsed`` seconds of training over all sessions.
    """

    def __init__(self, config: GanConfig):
        self.config = config
        torch.manual_seed(config.seed)
        self.c_dim = len(render.SHAPES) if config.conditional else 0
        by_class = config.mbstd_by == "class"
        self.G = channels_last_(build_generator(config))
        self.D = channels_last_(
            Discriminator(
                config.size,
                config.d_channels,
                c_dim=self.c_dim,
                mbstd_group=config.mbstd_group,
                mbstd_by_class=by_class,
            )
        )
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        lr_g = config.biggan_lr if config.arch == "biggan" else config.lr
        self.opt_G = self._adam(
            self.G, config.pl_interval if config.pl_weight else 0, lr_g
        )
        self.opt_D = self._adam(self.D, config.r1_interval if config.r1_gamma else 0)
        self.gens = {}
        for i, name in enumerate(("data", "latent", "augment")):
            self.gens[name] = torch.Generator().manual_seed(config.seed * 1000 + i)
        self.step = 0
        self.nimg = 0
        self.elapsed = 0.0
        # of elapsed, spent pretraining the features (None: not recorded)
        self.feature_seconds: float | None = 0.0
        self.pl_mean = torch.zeros(())
        # the settings after late_from, made once (the same config if none)
        self._late = config.at_step(config.late_from or 0)
        # discriminator heads on a frozen backbone's features (optional)
        self.F = self.FD = self.opt_FD = None
        if config.feature_d:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.feature_seed)
                self.F = channels_last_(FactorPredictor(width=config.feature_width))
                self.FD = channels_last_(
                    FeatureHeads(
                        config.feature_width,
                        self.c_dim,
                        hidden=config.feature_hidden,
                        group=config.mbstd_group,
                        by_class=by_class,
                    )
                )
            self.F.eval().requires_grad_(False)
            self.opt_FD = self._adam(self.FD, 0)

    @property
    def feature_seed(self) -> int:
        """Seed of the feature backbone's init and training stream."""
        return self.config.seed * 1000 + 3

    def pretrain_features(self) -> float:
        """Train the feature backbone (supervised, on renders); seconds."""
        started = time.monotonic()
        logger.info(
            "training the feature network (width %d, %d steps)",
            self.config.feature_width,
            self.config.feature_steps,
        )
        net = train_predictor(  # every setting spelt out: the recipe's own
            steps=self.config.feature_steps,
            batch_size=64,
            lr=2e-3,
            seed=self.feature_seed,
            width=self.config.feature_width,
        )
        self.F.load_state_dict(net.state_dict())
        self.F.eval().requires_grad_(False)
        self.feature_seconds = time.monotonic() - started
        return self.feature_seconds

    def _adam(
        self, net: nn.Module, interval: int, lr: float | None = None
    ) -> torch.optim.Adam:
        """Adam with the lazy-regularisation correction of its lr and betas
        (``lr`` defaults to the config's)."""
        c = interval / (interval + 1) if interval else 1.0
        lr = (self.config.lr if lr is None else lr) * c
        return torch.optim.Adam(net.parameters(), lr=lr, betas=(0.0, 0.99**c), eps=1e-8)

    # Sampling ---------------------------------------------------------------

    def sample_classes(self, n: int) -> torch.Tensor | None:
        """``(N, c_dim)`` one-hot classes drawn uniformly, or ``None``."""
        if not self.c_dim:
            return None
        idx = torch.randint(self.c_dim, (n,), generator=self.gens["latent"])
        return F.one_hot(idx, self.c_dim).float()

    def _g_classes(self, n: int, cfg: GanConfig) -> torch.Tensor | None:
        """The classes of G's step: with mode seeking, pairs (i, i + N/2)
        share a class (N/2 classes, drawn twice)."""
        c = self.sample_classes(n)
        if cfg.mode_seeking and c is not None:
            half = c[: n // 2]
            c = torch.cat([half, half, c[2 * (n // 2) :]])
        return c

    def real_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rendered images in [-1, 1] and their one-hot classes."""
        factors = render.sample_factors(self.config.batch, self.gens["data"])
        img = render.render(factors, self.config.size) * 2 - 1  # (N, 3, S, S)
        if not self.c_dim:
            return img, None
        return img, F.one_hot(factors["shape"], self.c_dim).float()

    def generate(self, G: nn.Module, n: int, c: torch.Tensor | None):
        """Images from random z with style mixing: ``(img, ws, z)``.

        A sample is mixed with probability ``mixing``: from a random layer
        index on, its codes come from a second z of the same class. A
        BigGAN-deep takes one standard normal z, and ``ws`` is that z.
        """
        gen = self.gens["latent"]
        if self.config.arch == "biggan":
            from lclr_shapes.gan import biggan

            return biggan.generate(G, n, c, gen)
        L = G.n_latent
        z = torch.randn(n, G.style_dim, generator=gen)
        z2 = torch.randn(n, G.style_dim, generator=gen)
        cutoff = torch.randint(1, L, (n,), generator=gen)
        mixed = torch.rand(n, generator=gen) < self.config.mixing
        cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, L))
        w = G.mapping(z, c)  # (N, D)
        ws = w.unsqueeze(1).expand(-1, L, -1)  # (N, L, D)
        if bool(mixed.any()):
            w2 = G.mapping(z2, c)
            late = torch.arange(L).view(1, L, 1) >= cutoff.view(n, 1, 1)
            ws = torch.where(late, w2.unsqueeze(1), ws)
        return G.synthesis(ws, noise_mode="random"), ws, z

    def settings(self) -> GanConfig:
        """The config in force at the current step (early or late phase)."""
        late_from = self.config.late_from
        return (
            self._late
            if late_from is not None and self.step >= late_from
            else self.config
        )

    def discriminate(
        self, img: torch.Tensor, c, with_class: bool = False, features: bool = True
    ):
        """D's ``(N,)`` logits for augmented ``img``; ``with_class`` in a
        run with a class loss, its ``(N, C)`` class logits (else None);
        with ``features`` in a run with feature heads, their ``(N, heads)``
        logits on the same augmented images (else None)."""
        cfg = self.settings()
        img = augment(img, cfg.augment, cfg.augment_p, self.gens["augment"])
        return self._judge(img, c, with_class, features)[:3]

    def _judge(
        self, img, c, with_class: bool, features: bool, parts: int = 1, plain=None
    ):
        """D (and the feature heads) on augmented ``img``: what
        :meth:`discriminate` returns, and a fourth entry: with ``plain``
        (unaugmented images, in a run with feature heads) the frozen
        network's feature vector of those, from the same pass of it (else
        None). ``parts`` as in ``Discriminator``."""
        if with_class and self.c_dim and self.settings().class_loss:
            logits, cls = self.D(img, c, with_class=True, parts=parts)
        else:
            logits, cls = self.D(img, c, parts=parts), None
        feat = vector = None
        if features and self.FD is not None:
            n = len(img)
            both = img if plain is None else torch.cat([img, plain])
            maps = backbone_features(self.F, both)  # frozen: no batch effects
            feat = self.FD([m[:n] for m in maps], c, parts=parts)
            vector = None if plain is None else maps[-1][n:]
        return logits, cls, feat, vector

    def discriminate_both(self, fake, c_fake, real, c_real):
        """:meth:`discriminate` of generated and real images in one pass of
        each network (a batch twice the size runs faster than two on CPU),
        each half with its own minibatch standard deviation, as in two
        passes. The augmentation draws are those of two calls, fake first.
        Returns ``(logits_fake, logits_real, cls_real, feat_fake,
        feat_real)``; ``cls_real`` and the features as in ``discriminate``.
        """
        cfg = self.settings()
        n = len(fake)
        img = torch.cat(
            [
                augment(fake, cfg.augment, cfg.augment_p, self.gens["augment"]),
                augment(real, cfg.augment, cfg.augment_p, self.gens["augment"]),
            ]
        )
        c = None if c_fake is None else torch.cat([c_fake, c_real])
        logits, cls, feat, _ = self._judge(img, c, True, True, parts=2)
        cls = None if cls is None else cls[n:]
        feat_fake, feat_real = (None, None) if feat is None else (feat[:n], feat[n:])
        return logits[:n], logits[n:], cls, feat_fake, feat_real

    # One step ---------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        """One D step, lazy R1, one G step, lazy path length, EMA update."""
        cfg = self.settings()
        n = cfg.batch
        metrics: dict[str, float] = {}

        # D: real images up, generated ones down.
        self.G.requires_grad_(cfg.reuse_fakes)
        self.D.requires_grad_(True)
        if self.FD is not None:
            self.FD.requires_grad_(True)
        real, c_real = self.real_batch()
        if cfg.reuse_fakes:
            # drawn once, with gradients; G's step below trains on them
            c_fake = self._g_classes(n, cfg)
            fake, _, z = self.generate(self.G, n, c_fake)
            judged = fake.detach()
        else:
            c_fake = self.sample_classes(n)
            with torch.no_grad():
                judged, _, _ = self.generate(self.G, n, c_fake)
        logits_fake, logits_real, cls, feat_fake, feat_real = self.discriminate_both(
            judged, c_fake, real, c_real
        )
        loss_d = F.softplus(logits_fake).mean()
        if feat_fake is not None:
            # each head is a discriminator of its own; their mean is weighed
            loss_feat = (
                F.softplus(feat_fake).mean() + F.softplus(-feat_real).mean()
            ) * cfg.feature_d
            loss_d = loss_d + loss_feat
            metrics["feat_d"] = loss_feat.item()
        if cls is not None:
            # AC-GAN: D also learns to name the class of real images
            loss_cls = F.cross_entropy(cls, c_real.argmax(dim=1))
            loss_d = loss_d + cfg.class_loss * loss_cls
            metrics["cls_real"] = loss_cls.item()
        loss_d = loss_d + F.softplus(-logits_real).mean()
        _finite(loss_d, "D")
        self.opt_D.zero_grad(set_to_none=True)
        if self.FD is not None:
            self.opt_FD.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_D.step()
        if self.FD is not None:
            self.opt_FD.step()
        metrics["loss_d"] = loss_d.item()
        metrics["d_real"] = logits_real.mean().item()
        metrics["d_fake"] = logits_fake.mean().item()

        # Lazy R1: penalise D's gradient on real images.
        if cfg.r1_gamma and self.step % cfg.r1_interval == 0:
            real = real.detach().requires_grad_(True)
            logits, _, _ = self.discriminate(real, c_real, features=False)
            (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
            penalty = grad.square().sum(dim=(1, 2, 3))  # (N,)
            loss_r1 = penalty.mean() * (cfg.r1_gamma / 2) * cfg.r1_interval
            _finite(loss_r1, "R1")
            self.opt_D.zero_grad(set_to_none=True)
            (loss_r1 + logits.mean() * 0).backward()
            self.opt_D.step()
            metrics["r1"] = penalty.mean().item()

        # G: make D call generated images real.
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        if self.FD is not None:
            self.FD.requires_grad_(False)
        if not cfg.reuse_fakes:
            c_fake = self._g_classes(n, cfg)
            fake, _, z = self.generate(self.G, n, c_fake)
        # D's view and the frozen network's plain view in one pass of it
        plain = fake if cfg.feature_class or cfg.feature_render else None
        img = augment(fake, cfg.augment, cfg.augment_p, self.gens["augment"])
        logits, cls, feat, vector = self._judge(img, c_fake, True, True, plain=plain)
        loss_g = F.softplus(-logits).mean()
        metrics["loss_g"] = loss_g.item()
        if feat is not None:
            loss_feat = F.softplus(-feat).mean() * cfg.feature_d
            loss_g = loss_g + loss_feat
            metrics["feat_g"] = loss_feat.item()
        if cls is not None:
            # ... and G learns to draw what D names as the asked class
            loss_cls = F.cross_entropy(cls, c_fake.argmax(dim=1))
            loss_g = loss_g + cfg.class_loss * loss_cls
            metrics["cls_fake"] = loss_cls.item()
        if cfg.feature_class:
            # ... and the frozen network, which G cannot train, agrees
            shape_logits = self.F.classes(vector)
            loss_fc = F.cross_entropy(shape_logits, c_fake.argmax(dim=1))
            loss_g = loss_g + cfg.feature_class * loss_fc
            metrics["feat_cls"] = loss_fc.item()
        if cfg.feature_render:
            # ... and draws the asked outline where that network reads one
            target = render_target(self.F, vector, c_fake.argmax(dim=1), cfg.size)
            loss_fr = render_distance(fake, target)
            loss_g = loss_g + cfg.feature_render * loss_fr
            metrics["feat_render"] = loss_fr.item()
        if cfg.mode_seeking:
            ratio = mode_seeking_ratio(fake, z)
            loss_g = loss_g + cfg.mode_seeking / (ratio + 1e-5)
            metrics["ms_ratio"] = ratio.item()
        _finite(loss_g, "G")  # every weighed part, not only the logged one
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_G.step()

        # Lazy path length: keep |J^T y| of the synthesis constant.
        if cfg.pl_weight and self.step % cfg.pl_interval == 0:
            metrics["pl"] = self._path_length_step()

        # Moving average of G, its half-life ramped up from zero.
        self.step += 1
        self.nimg += n
        self._update_ema()
        return metrics

    def state_finite(self) -> bool:
        """Whether every float tensor of the networks and of their
        optimisers' state is finite (a huge loss weight can leave the loss
        finite and overflow Adam's squared gradients)."""
        tensors = [
            t
            for net in (self.G, self.D, self.G_ema, self.FD)
            if net is not None
            for t in net.state_dict().values()
        ]
        for opt in (self.opt_G, self.opt_D, self.opt_FD):
            if opt is not None:
                for slot in opt.state.values():
                    tensors += [t for t in slot.values() if torch.is_tensor(t)]
        return all(
            bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()
        )

    def _path_length_step(self) -> float:
        cfg = self.config
        n = max(1, cfg.batch // 2)
        fake, ws, _ = self.generate(self.G, n, self.sample_classes(n))
        noise = torch.randn(fake.shape, generator=self.gens["latent"])
        noise = noise / math.sqrt(fake.shape[2] * fake.shape[3])
        (grad,) = torch.autograd.grad((fake * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()  # (N,)
        self.pl_mean = self.pl_mean.lerp(lengths.mean().detach(), 0.01)
        penalty = (lengths - self.pl_mean).square().mean()
        self.opt_G.zero_grad(set_to_none=True)
        (penalty * cfg.pl_weight * cfg.pl_interval).backward()
        self.opt_G.step()
        return penalty.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        cfg = self.config
        half_life = cfg.ema_kimg * 1000
        if cfg.ema_rampup:
            half_life = min(half_life, self.nimg * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(half_life, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    # Checkpoints ------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to resume, loadable with ``weights_only=True``."""
        return {
            "config": self.config.to_json(),
            "step": self.step,
            "nimg": self.nimg,
            "elapsed": self.elapsed,
            "feature_seconds": self.feature_seconds,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "pl_mean": self.pl_mean,
            **(
                {
                    "F": self.F.state_dict(),
                    "FD": self.FD.state_dict(),
                    "opt_FD": self.opt_FD.state_dict(),
                }
                if self.FD is not None
                else {}
            ),
            "rng": {
                **{k: g.get_state() for k, g in self.gens.items()},
                "torch": torch.get_rng_state(),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.step = int(state["step"])
        self.nimg = int(state["nimg"])
        self.elapsed = float(state["elapsed"])
        # absent from checkpoints written before it was recorded: unknown
        seconds = state.get("feature_seconds")
        self.feature_seconds = None if seconds is None else float(seconds)
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.pl_mean = state["pl_mean"]
        if self.FD is not None:
            self.F.load_state_dict(state["F"])
            self.FD.load_state_dict(state["FD"])
            self.opt_FD.load_state_dict(state["opt_FD"])
        for name, g in self.gens.items():
            g.set_state(state["rng"][name])
        torch.set_rng_state(state["rng"]["torch"])

    def save(self, folder: Path) -> Path:
        """Write the checkpoint atomically into ``folder``."""
        path = Path(folder) / CHECKPOINT
        save_state(path, self.state_dict())
        return path


def _figure(value: float | None, spec: str) -> str:
    """A logged metric, or ``-`` for one not measured in the window."""
    return "-" if value is None else format(value, spec)


def load_checkpoint(folder: str | Path, command: str = COMMAND) -> dict:
    """The training state saved in a run folder (tensors on CPU); a hint to
    train first names ``command``, the training command the user runs."""
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        if Path(folder).is_dir():
            raise RunFolderError(
                f"no {CHECKPOINT} in {folder}, so there is nothing to resume (a "
                "run stopped before its first checkpoint has none): train a new "
                "run with another --out, or delete the folder first"
            )
        raise RunFolderError(
            f"no {CHECKPOINT} in {folder}; train first with '{command} --out DIR'"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a GAN training checkpoint: {exc}"
        ) from None
    if not isinstance(state, dict) or "G_ema" not in state:
        raise CheckpointError(f"{path} is not a GAN training checkpoint")
    try:
        GanConfig.from_json(state["config"])
    except (KeyError, TypeError, ValueError) as exc:
        # e.g. settings an older version let the Python API combine
        raise CheckpointError(
            f"{path} holds a run config this version refuses ({exc}); train a new run"
        ) from None
    return state


class TrainingDiverged(LclrError):
    """The losses became NaN or infinite; the last checkpoint is kept."""


class NonFiniteLoss(ArithmeticError):
    """A loss of the step in flight is NaN or infinite: nothing is stepped
    with it, and the loop stops without saving."""


def _finite(loss: torch.Tensor, which: str) -> None:
    """Raise :class:`NonFiniteLoss` when ``loss`` is NaN or infinite."""
    if not math.isfinite(loss.item()):
        raise NonFiniteLoss(f"{which} loss {loss.item()}")


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep only the JSON lines of ``path`` whose ``step`` is <= ``step``."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] > step:
                continue
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the interruption
        kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def check_new_folder(out: Path) -> None:
    """Refuse ``out`` for a new run unless it is missing or empty.

    A log file the command line opened there before calling :func:`train`
    does not count.
    """
    if (out / CHECKPOINT).exists():
        raise RunFolderError(
            f"{out} already holds a run; pass --resume or choose another --out"
        )
    if out.exists() and (not out.is_dir() or any(p.name != LOG for p in out.iterdir())):
        raise RunFolderError(f"{out} is not an empty folder; choose another --out")


def limit_reached(config: GanConfig, step: int, elapsed: float) -> str | None:
    """Which of the run's totals ``step`` steps and ``elapsed`` seconds
    have reached: ``"steps"``, ``"minutes"`` or ``None``."""
    if config.steps is not None and step >= config.steps:
        return "steps"
    if config.minutes is not None and elapsed >= config.minutes * 60:
        return "minutes"
    return None


def _done(trainer: Trainer) -> bool:
    return limit_reached(trainer.config, trainer.step, trainer.elapsed) is not None


@contextlib.contextmanager
def _abort_names_the_checkpoint(out: Path, command: str, saved_step):
    """A second Ctrl-C (KeyboardInterrupt) drops the step in flight: say
    which checkpoint is kept (``saved_step()``), or that there is none."""
    from lclr.training import RunInterrupted

    try:
        yield
    except KeyboardInterrupt:
        step = saved_step()
        if step is None:
            raise RunInterrupted(
                f"aborted before the first checkpoint, so {out} holds nothing "
                "to resume: delete it and train again"
            ) from None
        raise RunInterrupted(
            f"aborted; {out / CHECKPOINT} holds step {step}; resume with: "
            f"{command} --out {out} --resume"
        ) from None


def train(
    config: GanConfig, out: str | Path, resume: bool = False, command: str = COMMAND
) -> Trainer:
    """Train (or resume) a run in folder ``out`` until its minutes or steps.

    Writes ``config.json``, ``checkpoint.pt`` every ``checkpoint_minutes``
    and at the end, ``metrics.jsonl`` and, every ``sample_minutes``, a
    sample grid and a collapse check under ``samples/``. With ``resume``
    the folder's checkpoint is loaded and ``config``'s ``minutes`` and
    ``steps`` (the totals to reach) replace the saved ones. ``command``
    is how the hints to resume spell the command (``lclr shapes
    train-gan`` when that is what the user typed).
    """
    from lclr.training import RunInterrupted, sigint_flag
    from lclr_shapes.gan import monitor

    out = Path(out)
    if resume:
        state = load_checkpoint(out, command)
        saved = GanConfig.from_json(state["config"])
        import attrs

        config = attrs.evolve(saved, minutes=config.minutes, steps=config.steps)
        trainer = Trainer(config)
        trainer.load_state_dict(state)
        logger.info("resumed at step %d (%.1f min)", trainer.step, trainer.elapsed / 60)
        # rows written after the checkpoint are about to be written again
        for log in (out / "metrics.jsonl", out / "samples" / "checks.jsonl"):
            _drop_rows_after(log, trainer.step)
    else:
        check_new_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(config)
        if trainer.FD is not None:
            # part of the run's wall time, as a pretrained D would not be;
            # saved at once, so that a stop before the first checkpoint
            # does not lose it
            try:
                trainer.elapsed += trainer.pretrain_features()
            except KeyboardInterrupt:
                # nothing is in the folder yet, so the same command starts over
                raise RunInterrupted(
                    "interrupted while training the feature network, before the "
                    f"first GAN step; {out} holds nothing to resume, so run the "
                    "same command again"
                ) from None
            trainer.save(out)
            if limit_reached(config, 0, trainer.elapsed) == "minutes":
                logger.warning(
                    "the feature network's training took %.1f of the run's "
                    "%g minutes, so no GAN step was trained; resume with more: "
                    "%s --out %s --resume --minutes M",
                    trainer.elapsed / 60,
                    config.minutes,
                    command,
                    out,
                )
    if not resume:
        monitor.save_reals(out / "samples" / "reals.png", config)
    (out / "config.json").write_text(config.to_json() + "\n")
    probe = monitor.Probe(config)
    late_from = config.late_from
    if late_from is not None and config.steps is not None and late_from >= config.steps:
        logger.warning(
            "the late settings start after step %d, but the run stops at step %d: "
            "they are never used",
            late_from,
            config.steps,
        )

    started = time.monotonic()
    base = trainer.elapsed
    last_ckpt = last_sample = trainer.elapsed
    saved_step = trainer.step if resume or trainer.FD is not None else None
    window_t, window_steps = time.monotonic(), 0
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def diverged(step: int) -> TrainingDiverged:
        # the diverged state is never saved over the last good one
        kept = (
            f"{out / CHECKPOINT} still holds step {saved_step}"
            if saved_step is not None
            else "no checkpoint was written"
        )
        return TrainingDiverged(
            f"the GAN's loss diverged by step {step}; {kept}; train a new run "
            "with smaller loss weights (or, for a BigGAN, a lower --biggan-lr)"
        )

    with (
        _abort_names_the_checkpoint(out, command, lambda: saved_step),
        sigint_flag() as stop,
        open(out / "metrics.jsonl", "a") as metrics_file,
    ):
        while not _done(trainer) and not stop.is_set():
            try:
                metrics = trainer.train_step()
            except NonFiniteLoss:
                raise diverged(trainer.step + 1) from None
            trainer.elapsed = base + time.monotonic() - started
            if trainer.step == late_from:
                logger.info("after step %d: late settings %s", late_from, config.late)
            window_steps += 1
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1

            # Log the window's averages.
            if trainer.step % config.log_every == 0 or _done(trainer):
                now = time.monotonic()
                record = {k: v / counts[k] for k, v in sums.items()}
                record.update(
                    step=trainer.step,
                    kimg=trainer.nimg / 1000,
                    minutes=trainer.elapsed / 60,
                    sec_per_step=(now - window_t) / window_steps,
                )
                # strict JSON: a metric that is not a finite number is null
                finite = {
                    k: v if not isinstance(v, float) or math.isfinite(v) else None
                    for k, v in record.items()
                }
                metrics_file.write(json.dumps(finite, allow_nan=False) + "\n")
                metrics_file.flush()
                # the frozen network's losses, in the runs that pay them
                extra = "".join(
                    f" {k} {record[k]:.3f}"
                    for k in ("feat_g", "feat_cls", "feat_render")
                    if k in record
                )
                logger.info(
                    "step %d kimg %.1f min %.1f s/step %.3f loss_d %.3f "
                    "loss_g %.3f d_real %.2f d_fake %.2f r1 %s ms %s%s",
                    trainer.step,
                    record["kimg"],
                    record["minutes"],
                    record["sec_per_step"],
                    record["loss_d"],
                    record["loss_g"],
                    record["d_real"],
                    record["d_fake"],
                    _figure(record.get("r1"), ".4f"),
                    _figure(record.get("ms_ratio"), ".3f"),
                    extra,
                )
                if not all(math.isfinite(record[k]) for k in ("loss_d", "loss_g")):
                    raise diverged(trainer.step)
                sums, counts, window_t, window_steps = {}, {}, now, 0

            # Sample grid and collapse check.
            if trainer.elapsed - last_sample >= config.sample_minutes * 60:
                last_sample = trainer.elapsed
                probe.report(trainer, out / "samples")

            # Checkpoint.
            if trainer.elapsed - last_ckpt >= config.checkpoint_minutes * 60:
                last_ckpt = trainer.elapsed
                if not trainer.state_finite():
                    raise diverged(trainer.step)
                trainer.save(out)
                saved_step = trainer.step
                logger.info("checkpoint at step %d", trainer.step)

    if not trainer.state_finite():
        raise diverged(trainer.step)
    trainer.save(out)
    if stop.is_set():
        # Ctrl-C: the step in flight was finished and saved
        raise RunInterrupted(
            f"stopped at step {trainer.step}; resume with: "
            f"{command} --out {out} --resume"
        )
    probe.report(trainer, out / "samples")
    logger.info(
        "finished: %d steps, %.1f kimg, %.1f min",
        trainer.step,
        trainer.nimg / 1000,
        trainer.elapsed / 60,
    )
    return trainer


if __name__ == "__main__":
    from lclr_shapes.gan.cli import main, train_gan

    main(train_gan, COMMAND)
