"""NVIDIA's StyleGAN2 network pickles: safe loading, conversion, fidelity.

The pickles are made here with the structure of the real ones: each network
module pickles itself through ``torch_utils.persistence.
_reconstruct_persistent_obj`` with its class name, its ``__dict__`` (OrderedDicts
of parameters, buffers, submodules; NumPy scalars) and the source code of its
Python file; tensors pickle the way torch pickles them (``_rebuild_parameter``,
``_rebuild_tensor_v2``, storages as legacy ``torch.save`` streams with
persistent ids), or sit in a torch zip file. The embedded "source" writes a
marker file when executed, so every load here also checks that it is not.

The modules below carry NVIDIA's attribute and tensor names, and a
straightforward float64 forward written from the StyleGAN2 paper's and
stylegan2-ada-pytorch's definitions: the reference our images must equal.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from lclr.cli import cli
from lclr.errors import CheckpointError
from lclr_stylegan2.generator import load_generator
from lclr_stylegan2.loading import load_checkpoint
from lclr_stylegan2.model import truncate

SQRT2 = math.sqrt(2)
SOURCE = [""]  # the module source the next pickle embeds


def _never_called(meta):
    raise AssertionError("the reconstruct function of the pickle was called")


_never_called.__module__ = "torch_utils.persistence"
_never_called.__name__ = _never_called.__qualname__ = "_reconstruct_persistent_obj"


class EasyDict(dict):
    """Pickles as ``dnnlib.util.EasyDict``, as NVIDIA's kwargs do."""


EasyDict.__module__ = "dnnlib.util"


@contextlib.contextmanager
def nvidia_modules():
    """Make ``torch_utils.persistence`` and ``dnnlib.util`` importable while
    pickling only (pickle checks that the globals it names exist)."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _never_called
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    mods = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": util,
    }
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class Persistent(nn.Module):
    """Reduces like a class under NVIDIA's ``persistent_class`` decorator."""

    def __reduce__(self):
        meta = dict(
            type="class",
            version=6,
            module_src=SOURCE[0],
            class_name=type(self).__name__,
            state=dict(self.__dict__),
        )
        return (_never_called, (meta,))


def norm2(x):
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


def fir(x, f, up, pad0, pad1, gain):
    """Zero-insertion upsampling, padding, then the FIR filter times gain."""
    n, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros(n, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    k = (f * gain).flip([0, 1]).to(x)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def setup_filter(taps=(1, 3, 3, 1)):
    f = torch.tensor(taps, dtype=torch.float32)
    f = f[:, None] * f[None, :]
    return f / f.sum()


class FullyConnectedLayer(Persistent):
    def __init__(self, fin, fout, activation="linear", lr_multiplier=1, bias_init=0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(fout, fin) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([fout], float(bias_init)))
        self.weight_gain = lr_multiplier / np.sqrt(fin)  # a NumPy float64
        self.bias_gain = lr_multiplier
        self._init_args = (fin, fout)
        self._init_kwargs = dict(activation=activation, lr_multiplier=lr_multiplier)

    def forward(self, x):
        x = x @ (self.weight.double() * float(self.weight_gain)).t()
        x = x + self.bias.double() * self.bias_gain
        return F.leaky_relu(x, 0.2) * SQRT2 if self.activation == "lrelu" else x


class MappingNetwork(Persistent):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, lr=0.01):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws, self.num_layers, self.w_avg_beta = num_ws, num_layers, 0.995
        embed = w_dim if c_dim else 0
        if c_dim:
            self.embed = FullyConnectedLayer(c_dim, embed)
        for i in range(num_layers):
            fin = z_dim + embed if i == 0 else w_dim
            layer = FullyConnectedLayer(fin, w_dim, "lrelu", lr_multiplier=lr)
            setattr(self, f"fc{i}", layer)
        self.register_buffer("w_avg", torch.randn(w_dim))

    def forward(self, z, c, psi=1.0, cutoff=None):
        x = norm2(z.double())
        if self.c_dim:
            x = torch.cat([x, norm2(self.embed(c.double()))], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        x = x[:, None].repeat(1, self.num_ws, 1)
        avg = self.w_avg.double()
        cut = self.num_ws if cutoff is None else cutoff
        x[:, :cut] = avg + psi * (x[:, :cut] - avg)
        return x


def modconv(x, weight, styles, demodulate, up):
    """Per-sample modulated conv; up=2 is upsample + FIR, then convolution."""
    out = []
    for n in range(x.shape[0]):
        w = weight.double() * styles[n][None, :, None, None]  # (O, I, k, k)
        if demodulate:
            w = w * (w.square().sum(dim=[1, 2, 3]) + 1e-8).rsqrt()[:, None, None, None]
        xn = x[n : n + 1]
        if up == 2:
            xn = fir(xn, setup_filter(), 2, 3, 2, gain=4)
            out.append(F.conv2d(xn, w.flip([2, 3])))
        else:
            out.append(F.conv2d(xn, w, padding=w.shape[-1] // 2))
    return torch.cat(out)


class SynthesisLayer(Persistent):
    def __init__(self, cin, cout, w_dim, resolution, up=1, conv_clamp=None):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, True
        self.activation, self.conv_clamp, self.padding = "lrelu", conv_clamp, 1
        self.register_buffer("resample_filter", setup_filter())
        self.act_gain = np.sqrt(2)
        self.affine = FullyConnectedLayer(w_dim, cin, bias_init=1)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.randn([]) * 0.5)
        self.bias = nn.Parameter(torch.randn(cout) * 0.5)

    def forward(self, x, w):
        x = modconv(x, self.weight, self.affine(w), True, self.up)
        x = x + self.noise_const.double() * self.noise_strength.double()
        x = F.leaky_relu(x + self.bias.double()[None, :, None, None], 0.2) * SQRT2
        c = self.conv_clamp
        return x if c is None else x.clamp(-c, c)


class ToRGBLayer(Persistent):
    def __init__(self, cin, w_dim, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, cin, bias_init=1)
        self.weight = nn.Parameter(torch.randn(3, cin, 1, 1))
        self.bias = nn.Parameter(torch.randn(3) * 0.5)
        self.weight_gain = 1 / np.sqrt(cin)

    def forward(self, x, w):
        styles = self.affine(w) * float(self.weight_gain)
        x = modconv(x, self.weight, styles, False, 1)
        x = x + self.bias.double()[None, :, None, None]
        c = self.conv_clamp
        return x if c is None else x.clamp(-c, c)


class SynthesisBlock(Persistent):
    def __init__(self, cin, cout, w_dim, res, is_last, conv_clamp):
        super().__init__()
        self.in_channels, self.w_dim, self.resolution = cin, w_dim, res
        self.img_channels, self.is_last, self.architecture = 3, is_last, "skip"
        self.use_fp16 = self.channels_last = False
        self.register_buffer("resample_filter", setup_filter())
        self.num_conv, self.num_torgb = (1 if cin == 0 else 2), 1
        if cin == 0:
            self.const = nn.Parameter(torch.randn(cout, res, res))
        else:
            self.conv0 = SynthesisLayer(cin, cout, w_dim, res, 2, conv_clamp)
        self.conv1 = SynthesisLayer(cout, cout, w_dim, res, 1, conv_clamp)
        self.torgb = ToRGBLayer(cout, w_dim, conv_clamp)

    def forward(self, x, img, ws):
        if self.in_channels == 0:
            x = self.const.double()[None].repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, ws[:, 0])
        else:
            x = self.conv1(self.conv0(x, ws[:, 0]), ws[:, 1])
        y = self.torgb(x, ws[:, self.num_conv])
        if img is not None:
            img = fir(img, setup_filter(), 2, 2, 1, gain=4)
        return x, (y if img is None else img + y)


class SynthesisNetwork(Persistent):
    def __init__(self, w_dim, res, channel_base, channel_max, conv_clamp):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, res, 3
        self.img_resolution_log2 = int(np.log2(res))
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        self.num_ws = 0
        for r in self.block_resolutions:
            block = SynthesisBlock(
                ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, r == res, conv_clamp
            )
            self.num_ws += block.num_conv + (block.num_torgb if r == res else 0)
            setattr(self, f"b{r}", block)

    def forward(self, ws):
        x = img = None
        i = 0
        for r in self.block_resolutions:
            block = getattr(self, f"b{r}")
            x, img = block(x, img, ws[:, i : i + block.num_conv + 1])
            i += block.num_conv
        return img


class Generator(Persistent):
    def __init__(
        self, res, z_dim=16, w_dim=16, c_dim=0, n_mlp=2, conv_clamp=256, base=512
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = res, 3
        self.synthesis = SynthesisNetwork(w_dim, res, base, 32, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, n_mlp)
        self._init_args = ()
        self._init_kwargs = dict(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=res,
            img_channels=3,
            mapping_kwargs=EasyDict(num_layers=n_mlp),
            synthesis_kwargs=EasyDict(
                channel_base=base, channel_max=32, num_fp16_res=4, conv_clamp=conv_clamp
            ),
        )

    @torch.no_grad()
    def forward(self, z, c=None, psi=1.0, cutoff=None):
        return self.synthesis(self.mapping(z, c, psi, cutoff))


class Discriminator(Persistent):
    def __init__(self):
        super().__init__()
        self.fc = FullyConnectedLayer(4, 1)


def make_generator(res=16, seed=0, **kwargs):
    torch.manual_seed(seed)
    return Generator(res, **kwargs).eval().requires_grad_(False)


def dump(path, data, marker, *, zip_format=False, protocol=4):
    """Pickle ``data`` as NVIDIA's training loop does (or torch.save it)."""
    SOURCE[0] = f"open({str(marker)!r}, 'w').write('the pickle ran its code')\n"
    with nvidia_modules():
        if zip_format:
            torch.save(data, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(data, f, protocol=protocol)
    return path


def snapshot(G):
    return dict(
        G=G,
        D=Discriminator(),
        G_ema=G,
        augment_pipe=None,
        training_set_kwargs=EasyDict(resolution=G.img_resolution, use_labels=True),
    )


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "the-pickle-ran"
    yield path
    assert not path.exists(), "code from a pickle was executed"


def inputs(G, n=3, seed=1):
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    c = F.one_hot(torch.arange(n) % G.c_dim, G.c_dim).float() if G.c_dim else None
    return z, c


def rel_err(ours, ref):
    return ((ours.double() - ref).abs().max() / ref.abs().max()).item()


# Fidelity ----------------------------------------------------------------------


CASES = {
    "16px-2mlp-clamp256": dict(res=16, n_mlp=2, conv_clamp=256),
    "32px-8mlp-noclamp": dict(res=32, n_mlp=8, conv_clamp=None),
    "32px-8mlp-cond-clamp256": dict(res=32, n_mlp=8, c_dim=3, conv_clamp=256),
    "16px-3mlp-cond-clamp1-zdim8": dict(
        res=16, n_mlp=3, c_dim=2, conv_clamp=1.0, z_dim=8, w_dim=12
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_images_equal_the_reference(tmp_path, marker, case):
    G = make_generator(seed=len(case), **CASES[case])
    if G.synthesis.b4.conv1.conv_clamp:
        G.synthesis.b4.conv1.bias[0] = 1e3  # make the clamp matter
    path = dump(tmp_path / "net.pkl", snapshot(G), marker, protocol=3)
    loaded = load_checkpoint(path)
    model = loaded.model.eval()
    torch.testing.assert_close(loaded.latent_avg, G.mapping.w_avg)
    z, c = inputs(G)
    with torch.no_grad():
        w = model.mapping(z, c)
        for psi, cutoff in ((1.0, None), (0.6, None), (0.6, 3)):
            ref = G(z, c, psi, cutoff)
            ws = truncate(w, loaded.latent_avg, psi, cutoff, model)
            assert rel_err(model.synthesis(ws), ref) < 1e-4, (psi, cutoff)
    if G.synthesis.b4.conv1.conv_clamp:  # the reference itself depends on it
        G.synthesis.b4.conv1.conv_clamp = None
        assert rel_err(G(z, c, psi, cutoff), ref) > 1e-3


def test_zip_format_and_generator_api(tmp_path, marker):
    G = make_generator(res=16, c_dim=3, n_mlp=8, seed=5)
    path = dump(tmp_path / "net.pt", snapshot(G), marker, zip_format=True)
    gen = load_generator(path, truncation=0.7, truncation_cutoff=4, class_label=2)
    assert gen.describe()["source"] == "nvidia-pickle"
    codes = gen.sample_latent(3, seed=9)
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(9))
    c = F.one_hot(torch.full((3,), 2), 3).float()
    ref = G(z, c, 0.7, 4)
    assert rel_err(gen.synthesize(codes), ((ref + 1) / 2).clamp(0, 1)) < 1e-4


def test_export_round_trip_and_class_names(tmp_path, marker):
    G = make_generator(res=16, c_dim=3, seed=6)
    src = dump(tmp_path / "cond.pkl", snapshot(G), marker)
    out = tmp_path / "cond.safetensors"
    args = ["export-generator", str(src), str(out), "--class-names", "a,b,c"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    a = load_generator(src, class_label=1)
    b = load_generator(out, class_label="b")
    assert b.class_names == ["a", "b", "c"] and b.class_index == 1
    torch.testing.assert_close(a.latent_avg, b.latent_avg, rtol=0, atol=0)
    codes = a.sample_latent(2, seed=0)
    assert torch.equal(codes, b.sample_latent(2, seed=0))
    assert torch.equal(a.synthesize(codes), b.synthesize(codes))
    result = CliRunner().invoke(cli, args)  # never overwrites silently
    assert result.exit_code != 0 and "--force" in result.output
    bad = ["export-generator", str(src), str(tmp_path / "x.st"), "--class-names", "a"]
    result = CliRunner().invoke(cli, bad)
    assert result.exit_code == 2 and "3 classes" in result.output


def test_cli_takes_a_pickle(tmp_path, marker):
    path = dump(tmp_path / "net.pkl", snapshot(make_generator(res=16)), marker)
    result = CliRunner().invoke(
        cli, ["layers", "--generator", "stylegan2", "--weights", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert "convs.3" in result.output


# Hostile pickles -----------------------------------------------------------------


class Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def hostile(marker):
    touch = f"open({str(marker)!r}, 'w')"
    return {
        "os.system": Reduce(os.system, f"touch {marker}"),
        "builtins.eval": Reduce(eval, touch),
        "builtins.exec": Reduce(exec, touch),
        "subprocess.Popen": Reduce(subprocess.Popen, ["touch", str(marker)]),
        "builtins.open": Reduce(open, str(marker), "w"),
        "nested": Reduce(OrderedDict, Reduce(open, str(marker), "w")),
        "torch.load": Reduce(torch.load, str(marker)),
    }


@pytest.mark.parametrize("name", list(hostile("m")))
def test_refuses_hostile_pickles(tmp_path, marker, name):
    G = make_generator(res=16)
    data = snapshot(G)
    data["G_ema"].mapping.fc0.evil = hostile(marker)[name]  # deep inside
    path = dump(tmp_path / "evil.pkl", data, marker)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith("refused to load") and "\n" not in msg, msg
    assert name.split(".")[-1] in msg or name == "nested"


def test_refuses_a_storage_stream_that_calls_code(tmp_path, marker):
    # A storage's bytes are a second pickle stream; it gets the same care.
    inner = pickle.dumps(Reduce(open, str(marker), "w"), protocol=2)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Reduce(torch.storage._load_from_bytes, inner)))
    with pytest.raises(CheckpointError, match="refused.*import io.open"):
        load_checkpoint(path)


def test_cli_error_is_one_line(tmp_path, marker):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Reduce(os.system, f"touch {marker}")))
    result = CliRunner().invoke(cli, ["layers", "--weights", str(path)])
    assert result.exit_code == 4
    assert result.output.count("\n") == 1 and "system" in result.output


# Clear errors --------------------------------------------------------------------


class SynthesisInput(Persistent):
    def __init__(self):
        super().__init__()
        self.register_buffer("freqs", torch.randn(4, 2))
        self.size = np.array([36, 36])  # StyleGAN3 keeps NumPy arrays


def test_stylegan3_is_named(tmp_path, marker):
    G = make_generator(res=16)
    G.synthesis = SynthesisNetwork(16, 16, 512, 32, None)
    G.synthesis.input = SynthesisInput()
    path = dump(tmp_path / "sg3.pkl", dict(G_ema=G), marker)
    with pytest.raises(CheckpointError, match="StyleGAN3 .alias-free.*not a StyleGAN2"):
        load_checkpoint(path)


def test_truncated_corrupt_and_other_files(tmp_path, marker):
    path = dump(tmp_path / "net.pkl", snapshot(make_generator(res=16)), marker)
    data = path.read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pkl")
    dump(tmp_path / "d.pkl", dict(D=Discriminator()), marker)
    with pytest.raises(CheckpointError, match="without a generator 'G_ema'"):
        load_checkpoint(tmp_path / "d.pkl")
    dump(tmp_path / "d2.pkl", dict(G_ema=Discriminator()), marker)
    with pytest.raises(CheckpointError, match="Discriminator, not a generator"):
        load_checkpoint(tmp_path / "d2.pkl")
    torch.save({"fc.weight": torch.zeros(3, 4)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a StyleGAN2 generator state"):
        load_checkpoint(tmp_path / "other.pt")


def test_shape_mismatch_names_key_and_shapes(tmp_path, marker):
    G = make_generator(res=16)
    G.synthesis.b8.conv1.affine.weight = nn.Parameter(torch.randn(32, 8))
    path = dump(tmp_path / "net.pkl", snapshot(G), marker)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "synthesis.b8.conv1.affine.weight" in msg, msg
    assert "(32, 8)" in msg and "(32, 16)" in msg, msg


def test_unsupported_layouts_are_refused_clearly(tmp_path, marker):
    G = make_generator(res=16)
    G.synthesis.b8.architecture = "resnet"
    path = dump(tmp_path / "net.pkl", snapshot(G), marker)
    with pytest.raises(CheckpointError, match="architecture 'resnet'"):
        load_checkpoint(path)


def test_damaged_pickles_fail_in_one_line(tmp_path, marker):
    # Bytes changed at random: every outcome is a load or one clear line.
    path = dump(tmp_path / "net.pkl", snapshot(make_generator(res=16)), marker)
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    errors = 0
    for _ in range(40):
        damaged = bytearray(data)
        for at in rng.integers(0, len(data), size=3):
            damaged[at] = int(rng.integers(0, 256))
        (tmp_path / "bad.pkl").write_bytes(bytes(damaged))
        try:
            load_checkpoint(tmp_path / "bad.pkl")
        except CheckpointError as e:
            assert "\n" not in str(e)
            errors += 1
    assert errors > 0


def test_z_dim_other_than_w_dim_through_the_generator(tmp_path, marker):
    # z is drawn with the mapping's input width, not w's
    G = make_generator(res=16, c_dim=2, z_dim=8, w_dim=12, n_mlp=3, seed=7)
    path = dump(tmp_path / "net.pkl", snapshot(G), marker)
    gen = load_generator(path, class_label=1, truncation=0.6)
    assert gen.latent_dim == 12
    codes = gen.sample_latent(3, seed=4)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    ref = G(z, F.one_hot(torch.full((3,), 1), 2).float(), 0.6)
    assert rel_err(gen.synthesize(codes), ((ref + 1) / 2).clamp(0, 1)) < 1e-4
    result = CliRunner().invoke(cli, ["layers", "--weights", str(path)])
    assert result.exit_code == 0 and "of size 12" in result.output


# A file cannot change the loader, nor make it allocate more than the file ----


def _glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(s):
    return b"X" + len(s).to_bytes(4, "little") + s.encode()


def _stream_pickle(stream, times=1):
    """A pickle calling torch.storage._load_from_bytes(stream) ``times``
    times through the memo, keeping every result in a list."""
    body = b"\x80\x03]" + _glob("torch.storage", "_load_from_bytes") + b"q\x01"
    body += b"B" + len(stream).to_bytes(4, "little") + stream + b"q\x02\x85Ra"
    return body + b"h\x01h\x02\x85Ra" * (times - 1) + b"."


def test_pickles_cannot_modify_the_allow_list(tmp_path, marker):
    good = dump(tmp_path / "net.pkl", snapshot(make_generator(res=16)), marker)
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[2:]
    poison = _glob("torch", "FloatStorage") + b"}" + _text("dtype") + _text("x")
    inner = b"\x80\x02" + poison + b"sb0" + magic  # BUILD inside a storage stream
    files = {
        "storage": b"\x80\x02" + poison + b"sb.",
        "inner": _stream_pickle(inner),
        "function": b"\x80\x02"
        + _glob("_codecs", "encode")
        + b"N}"
        + _text("__defaults__")
        + _text("utf-8")
        + b"\x85s\x86b.",
    }
    for data in files.values():
        (tmp_path / "evil.pkl").write_bytes(data)
        with pytest.raises(CheckpointError, match="refused.*the pickle modifies"):
            load_checkpoint(tmp_path / "evil.pkl")
        load_checkpoint(good)  # later loads are unaffected


def _legacy_stream(storages, pad=0):
    """A legacy torch.save stream of float storages ``{key: numel}`` whose
    data is missing, padded to ``pad`` bytes."""

    class Storage:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
            return None

    f = io.BytesIO()
    info = dict(protocol_version=1001, little_endian=True)
    for obj in (0x1950A86A20F9469CFC6C, 1001, info):
        pickle.dump(obj, f, protocol=2)
    Pickler(f, protocol=2).dump([Storage(k, n) for k, n in storages.items()])
    pickle.dump(list(storages), f, protocol=2)
    return f.getvalue() + b"\0" * max(0, pad - len(f.getvalue()))


def test_storages_cannot_outgrow_the_file(tmp_path, marker):
    # each storage fits its stream, together they are 50x the file
    stream = _legacy_stream({f"k{i}": 16_000 for i in range(50)}, pad=65_000)
    (tmp_path / "many.pkl").write_bytes(_stream_pickle(stream))
    # one valid 64 kB storage, unpickled 100 times through the memo
    f = io.BytesIO()
    storage = torch.zeros(16_000)._typed_storage()
    torch.save(storage, f, _use_new_zipfile_serialization=False)
    (tmp_path / "memo.pkl").write_bytes(_stream_pickle(f.getvalue(), times=100))
    for name in ("many.pkl", "memo.pkl"):
        with pytest.raises(CheckpointError, match="storages are larger than the file"):
            load_checkpoint(tmp_path / name)


def test_tensor_views_cannot_outgrow_the_file(tmp_path, marker):
    # a 4-byte storage viewed as 10^12 elements
    G = make_generator(res=16)
    G.synthesis.b8.conv1.noise_const = torch.zeros(1).expand(10**6, 10**6)
    path = dump(tmp_path / "net.pkl", snapshot(G), marker)
    with pytest.raises(CheckpointError, match="tensors are larger than the file"):
        load_checkpoint(path)
    result = CliRunner().invoke(cli, ["layers", "--weights", str(path)])
    assert result.exit_code == 4 and result.output.count("\n") == 1


def test_zip_entries_torch_never_writes_are_refused(tmp_path, marker):
    G = make_generator(res=16)
    src = dump(tmp_path / "net.pt", snapshot(G), marker, zip_format=True)
    with zipfile.ZipFile(src) as zf:
        entries = [(i.filename, zf.read(i)) for i in zf.infolist()]
    # deflated: a few kB could unpack to gigabytes
    with zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    with pytest.raises(CheckpointError, match="refused.*compressed"):
        load_checkpoint(tmp_path / "deflated.pt")
    # a stored entry whose directory claims 1000x its bytes
    data = bytearray(src.read_bytes())
    name = next(n for n, _ in entries if n.endswith("data/0")).encode()
    at = data.rfind(b"PK\x01\x02")
    while data[at + 46 : at + 46 + len(name)] != name:
        at = data.rfind(b"PK\x01\x02", 0, at)
    size = int.from_bytes(data[at + 24 : at + 28], "little")
    data[at + 24 : at + 28] = (size * 1000).to_bytes(4, "little")
    (tmp_path / "lying.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="refused.*inconsistent sizes"):
        load_checkpoint(tmp_path / "lying.pt")


def test_filters_lclr_cannot_represent_are_refused(tmp_path, marker):
    nonsep = torch.tensor([[1.0, 2, 1], [2, 8, 2], [1, 2, 1]]) / 20
    for name, filt in (("nonsep", nonsep), ("other", setup_filter((1, 2, 1)))):
        G = make_generator(res=16)
        G.synthesis.b8.resample_filter = filt  # b16 keeps [1, 3, 3, 1]
        if name == "nonsep":
            for block in (G.synthesis.b8, G.synthesis.b16):
                block.resample_filter = filt
                block.conv0.resample_filter = filt
        path = dump(tmp_path / f"{name}.pkl", snapshot(G), marker)
        match = "not separable" if name == "nonsep" else "different resampling"
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(path)


def test_nesting_that_crashes_unpicklers_is_refused(tmp_path, marker):
    # Python hashes nested tuples recursively in C: a deep tuple used as a
    # dict key or set item kills the interpreter inside any unpickler,
    # torch.load(weights_only=True) included. Loaded in a child process, so
    # that a regression fails this test instead of the whole run.
    deep = b")" + b"\x85" * 300_000
    key = b"\x80\x02}" + deep + b"Ns."
    files = {
        "key.pkl": key,
        "set.pkl": b"\x80\x02" + _glob("builtins", "set") + b"]" + deep + b"a\x85R.",
        "stream.pkl": _stream_pickle(b"\x80\x02" + deep + b"0" + key),
    }
    torch.save({"g_ema": {"x": torch.zeros(1)}}, tmp_path / "port.pt")
    with (
        zipfile.ZipFile(tmp_path / "port.pt") as zf,
        zipfile.ZipFile(tmp_path / "zip.pt", "w") as out,
    ):
        for info in zf.infolist():
            data = key if info.filename.endswith("data.pkl") else zf.read(info)
            out.writestr(info.filename, data)
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    files["legacy.pt"] = magic + pickle.dumps(1001, protocol=2) + key
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    names = [*files, "zip.pt"]
    code = (
        "import sys\n"
        "from lclr.errors import CheckpointError\n"
        "from lclr_stylegan2.loading import load_checkpoint\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        load_checkpoint(path)\n"
        "    except CheckpointError as e:\n"
        "        print(e)\n"
    )
    args = [sys.executable, "-c", code, *(str(tmp_path / n) for n in names)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert len(lines) == len(names), run.stdout
    assert all("nests objects more than 1000 deep" in line for line in lines), lines
