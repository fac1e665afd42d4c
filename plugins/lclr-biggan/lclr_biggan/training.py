"""Train a BigGAN-deep and save it in the ``pytorch-pretrained-biggan`` layout.

The trainable network is :class:`~lclr_biggan.model.BigGAN` with PyTorch's
``spectral_norm`` hook on every conv and linear but the class embedding: the
hook's parameter and buffers are the format's ``weight_orig``, ``weight_u``
and ``weight_v``, so its state dict is already the weights file. In training
mode each forward moves u and v by one power iteration, as the reference's
training mode does, and the batch norms use the batch's statistics.

The format stores batch-norm statistics per truncation psi (row i for psi =
i / (n_stats - 1)) instead of one running average. :func:`measure_statistics`
fills them honestly: for each row it runs the network on one fixed batch of
truncated-normal codes scaled by that psi, every class equally often, and
stores the mean and (biased) variance each norm saw.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from .generator import truncated_normal
from .loading import CONFIG_NAME, WEIGHTS_NAME, check_state_dict, spectral_prefixes
from .model import BigGAN, BigGANConfig, ClassBatchNorm

#: Codes per stored row of batch-norm statistics.
STAT_SAMPLES = 256
#: Power iterations that settle u and v before saving.
POWER_ITERATIONS = 50


def trainable_biggan(config: BigGANConfig) -> BigGAN:
    """A freshly initialised BigGAN-deep with spectral-norm hooks.

    Weights of the spectral-normalised layers are orthogonal, as BigGAN
    initialises them; the class embedding is standard normal, so a class
    vector is about as long as a code. Draws from torch's global RNG.
    """
    model = BigGAN(config)
    nn.init.normal_(model.embeddings.weight)
    for name in spectral_prefixes(model):
        module = model.get_submodule(name)
        nn.init.orthogonal_(module.weight)
        nn.utils.spectral_norm(module)
    return model


@contextlib.contextmanager
def batch_statistics(model: BigGAN) -> Iterator[BigGAN]:
    """Inside: eval mode, except that the batch norms use batch statistics.

    For sampling a network in training whose stored statistics are not
    measured yet; u and v stay as they are, and every module's mode is
    restored on exit.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in model.modules():
        if isinstance(m, ClassBatchNorm):
            m.training = True  # not its linears: their u and v stay put
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@torch.no_grad()
def converge_spectral_norm(model: BigGAN, iterations: int = POWER_ITERATIONS) -> None:
    """Power iterations on each ``weight_orig`` from its stored u, so that
    u . (W v) is W's largest singular value, as a saved file should say."""
    for name in spectral_prefixes(model):
        module = model.get_submodule(name)
        w = module.weight_orig.reshape(module.weight_orig.shape[0], -1)
        u, v = module.weight_u, module.weight_v
        for _ in range(iterations):
            v = F.normalize(w.t() @ u, dim=0, eps=1e-12)
            u = F.normalize(w @ v, dim=0, eps=1e-12)
        module.weight_u.copy_(u)
        module.weight_v.copy_(v)


@torch.no_grad()
def measure_statistics(model: BigGAN, n: int = STAT_SAMPLES, seed: int = 0) -> None:
    """Fill every batch norm's stored rows with measured statistics.

    Row i: the mean and biased variance each norm's input has when the
    network (in :func:`batch_statistics` mode) draws ``n`` samples, class
    ``k mod C`` for sample k, from the codes ``psi_i * t``, where ``t`` is
    one fixed draw of the normal truncated to [-2, 2].
    """
    config = model.config
    gen = torch.Generator().manual_seed(seed)
    base = truncated_normal((n, config.z_dim), gen)
    classes = F.one_hot(torch.arange(n) % config.num_classes, config.num_classes)
    norms = [m for m in model.modules() if isinstance(m, ClassBatchNorm)]
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(i):
        def hook(module, args):
            x = args[0]
            seen[i] = (x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False))

        return hook

    handles = [m.register_forward_pre_hook(record(i)) for i, m in enumerate(norms)]
    try:
        with batch_statistics(model):
            for row in range(config.n_stats):
                psi = row / (config.n_stats - 1)
                seen.clear()
                model(psi * base, classes.float(), 1.0)  # psi unused: batch stats
                for i, norm in enumerate(norms):
                    norm.running_means[row] = seen[i][0]
                    norm.running_vars[row] = seen[i][1]
    finally:
        for handle in handles:
            handle.remove()


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_biggan(
    model: BigGAN,
    folder: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``config.json`` and ``pytorch_model.bin`` for ``model`` (with
    its spectral-norm hooks) into ``folder``; returns the folder.

    ``class_names`` (one per class) go into ``config.json``, where the
    loader finds them and the reference ignores them. The state dict is
    checked key for key against the config before anything is written.
    """
    folder = Path(folder)
    config = model.config
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    check_state_dict(state, BigGAN(config), str(folder))
    settings = attrs.asdict(config)
    settings["layers"] = [list(layer) for layer in config.layers]
    if class_names is not None:
        names = [str(name) for name in class_names]
        if len(names) != config.num_classes:
            raise ValueError(f"{len(names)} class names for {config.num_classes}")
        settings["class_names"] = names
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(settings, indent=2) + "\n"
    _write_atomic(folder / CONFIG_NAME, lambda p: p.write_text(text))
    _write_atomic(folder / WEIGHTS_NAME, lambda p: torch.save(state, p))
    return folder
