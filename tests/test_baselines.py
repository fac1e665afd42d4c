"""GANSpace and SeFa, the closed-form baselines, against naive float64
versions of their formulas, and as runs through the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lclr.cli import cli
from lclr.errors import ConfigError
from lclr_baselines.models import GanSpaceDirections, SeFaDirections
from lclr_stylegan2.generator import StyleGAN2Generator
from lclr_stylegan2.model import StyleGAN2

pytestmark = pytest.mark.usefixtures("fresh_registry")


def tiny_stylegan2(seed=0, space="w"):
    torch.manual_seed(seed)
    channels = {4: 16, 8: 16, 16: 8, 32: 8}
    model = StyleGAN2(32, style_dim=12, n_mlp=2, channels=channels).eval()
    return StyleGAN2Generator(model, model.mean_latent(64), space=space)


def sampler(generator, seed=0):
    stream = torch.Generator().manual_seed(seed)
    return lambda n: generator.sample_latent(n, generator=stream)


def same_up_to_sign(a, b, tol):
    """Rows of ``a`` and ``b`` equal up to each row's sign."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    signs = np.sign(np.sum(a * b, axis=1, keepdims=True))
    return np.abs(a - signs * b).max() <= tol


def naive_top(matrix, k):
    """Top ``k`` eigenvalues and eigenvectors (rows), numpy, float64."""
    values, vectors = np.linalg.eig(np.asarray(matrix, dtype=np.float64))
    order = np.argsort(-values.real)[:k]
    return values.real[order], vectors.real[:, order].T


# SeFa ---------------------------------------------------------------------------


def authors_style_weights(gen, codes):
    """SeFa's layout: per code the affine of the conv that reads it, the last
    code's that of the final to-RGB layer; (D, M), one column per channel."""
    m = gen.model
    convs = [m.conv1, *m.convs]
    columns = []
    for i in codes:
        module = convs[i] if i < len(convs) else m.to_rgbs[-1]
        columns.append(module.conv.modulation.weight.detach().double().numpy().T)
    return np.concatenate(columns, axis=1)


@pytest.mark.parametrize("codes", [None, [0, 3], [7]])
def test_sefa_is_the_top_eigenvectors_of_the_normalised_style_weights(codes):
    gen = tiny_stylegan2()
    assert gen.num_codes == 8  # 7 styled convs, then the last to-RGB
    sefa = SeFaDirections(5, gen.latent_dim)
    sefa.fit(gen, layer="conv1", sample=sampler(gen), edit_layers=codes)

    weight = authors_style_weights(gen, codes or range(gen.num_codes))
    weight = weight / np.linalg.norm(weight, axis=0, keepdims=True)
    values, vectors = naive_top(weight @ weight.T, 5)
    assert same_up_to_sign(sefa.theta.numpy(), vectors, 1e-5)
    np.testing.assert_allclose(sefa.eigenvalues.numpy(), values, rtol=1e-6)
    assert torch.allclose(sefa.theta @ sefa.theta.T, torch.eye(5), atol=1e-6)


def test_stylegan2_style_weights_are_what_each_code_is_read_by():
    # a change of code i alone changes the style its reader computes by
    # exactly latent_weights([i]) @ change
    gen = tiny_stylegan2(seed=1)
    m = gen.model
    readers = [c.conv.modulation for _, c in m.styled_convs()]
    readers.append(m.to_rgbs[-1].conv.modulation)
    styles = {}
    hooks = [
        r.register_forward_hook(lambda mod, i, out, k=k: styles.__setitem__(k, out))
        for k, r in enumerate(readers)
    ]
    try:
        ws = gen.sample_latent(2, seed=0)[:, None].repeat(1, gen.num_codes, 1)
        for i in range(gen.num_codes):
            change = torch.randn(2, gen.latent_dim)
            gen.synthesize(ws)
            before = styles[i]
            moved = ws.clone()
            moved[:, i] += change
            gen.synthesize(moved)
            expected = change @ gen.latent_weights([i]).T
            torch.testing.assert_close(styles[i] - before, expected, atol=1e-5, rtol=0)
    finally:
        for hook in hooks:
            hook.remove()


def test_sefa_on_biggan_reads_the_z_columns_of_gen_z_and_the_block_norms():
    from lclr_biggan.generator import load_generator

    gen = load_generator(None)
    state = gen.model.state_dict()
    d = gen.latent_dim
    rows = gen.latent_weights([0, 2])
    block = gen.code_layers()[2]  # the module that reads code 2
    expected = [state["generator.gen_z.weight"][:, :d]]
    for j in range(4):
        for part in ("scale", "offset"):
            expected.append(state[f"generator.{block}.bn_{j}.{part}.weight"][:, :d])
    torch.testing.assert_close(rows, torch.cat(expected), atol=0, rtol=0)
    sefa = SeFaDirections(4, d)
    sefa.fit(gen, layer=gen.default_layer(), sample=sampler(gen), edit_layers=[0, 2])
    a = rows.double().numpy()
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    assert same_up_to_sign(sefa.theta.numpy(), naive_top(a.T @ a, 4)[1], 1e-5)


def test_sefa_says_what_to_use_when_the_generator_has_no_such_weights():
    gen = tiny_stylegan2(space="z")
    with pytest.raises(ConfigError, match="use --direction ganspace"):
        SeFaDirections(3, gen.latent_dim).fit(gen, layer="conv1", sample=sampler(gen))


def test_sefa_refuses_more_directions_than_the_weights_rank():
    # found in review: -k 64 on a code read by 32 rows gave 32 directions
    # that change nothing (eigenvalue ~1e-16, their choice up to rounding)
    gen = tiny_stylegan2()
    rows = gen.latent_weights([7]).shape[0]  # the last to-RGB's input channels
    assert rows < gen.latent_dim
    sefa = SeFaDirections(rows + 1, gen.latent_dim)
    with pytest.raises(ConfigError, match=f"at most {rows} directions.*-k {rows}"):
        sefa.fit(gen, layer="conv1", sample=sampler(gen), edit_layers=[7])
    SeFaDirections(rows, gen.latent_dim).fit(
        gen, layer="conv1", sample=sampler(gen), edit_layers=[7]
    )


def test_more_directions_than_the_latent_size_is_one_clear_error():
    with pytest.raises(ConfigError, match="at most D=12 directions.*-k 12 or fewer"):
        SeFaDirections(13, 12)


# GANSpace -----------------------------------------------------------------------


def test_ganspace_in_w_is_the_pca_of_the_sampled_codes():
    from lclr_baselines.options import GanSpaceOptions

    gen = tiny_stylegan2()
    model = GanSpaceDirections(4, gen.latent_dim, GanSpaceOptions(samples=500))
    model.fit(gen, layer="conv1", sample=sampler(gen, seed=3))
    codes = sampler(gen, seed=3)(500).double().numpy()
    values, vectors = naive_top(np.cov(codes, rowvar=False), 4)
    assert same_up_to_sign(model.theta.numpy(), vectors, 1e-5)
    np.testing.assert_allclose(model.eigenvalues.numpy(), values, rtol=1e-6)


def test_ganspace_in_z_regresses_the_codes_on_the_layers_components():
    from lclr.registry import get_registry
    from lclr_baselines.options import GanSpaceOptions

    gen = get_registry().build("generator", "toy", {}, weights=None)
    n, k = 300, 3
    model = GanSpaceDirections(k, gen.latent_dim, GanSpaceOptions(samples=n))
    model.fit(gen, layer="conv1", sample=sampler(gen, seed=5))

    z = sampler(gen, seed=5)(n)
    feats = gen.features(z, "conv1").flatten(1).double().numpy()
    z = z.double().numpy()
    feats, z = feats - feats.mean(0), z - z.mean(0)
    u, s, _ = np.linalg.svd(feats, full_matrices=False)
    coords = u[:, :k] * s[:k]  # each sample's first k component coordinates
    directions = np.linalg.lstsq(coords, z, rcond=None)[0]  # (k, D)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    assert same_up_to_sign(model.theta.numpy(), directions, 1e-4)
    np.testing.assert_allclose(
        model.eigenvalues.numpy(), s[:k] ** 2 / (n - 1), rtol=1e-4
    )


# Runs ---------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


TOY = ["--generator", "toy", "--layer", "conv1", "-k", "3", "--no-render"]


def test_a_ganspace_run_is_a_run_folder_fitted_at_step_0(tmp_path):
    import lclr

    for name in ("a", "b"):
        result = invoke(
            "run", *TOY, "--direction", "ganspace", "--out", tmp_path / name
        )
        assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "a" / "directions.json").read_text())
    assert meta["direction"] == "ganspace" and meta["step"] == 0
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
    run = lclr.load_run(tmp_path / "a")
    again = lclr.load_run(tmp_path / "b")
    assert torch.equal(run.directions.theta, again.directions.theta)  # one seed
    codes = run.generator.sample_latent(2, seed=0)
    moved = run.edit(codes, 1, 2.0)
    torch.testing.assert_close((moved - codes).norm(dim=1), torch.full((2,), 2.0))

    result = invoke("run", "--resume", tmp_path / "a", "--iterations", "5")
    assert result.exit_code != 0
    assert (
        len(result.output.strip().splitlines()) == 1
        and "nothing to resume" in result.output
    )
    # found in review: render and eval said the run "stopped at step 0 of
    # 1000" and sent users to --resume, and a new run on the folder was
    # told to resume it
    assert not (tmp_path / "a" / "state.pt").exists()
    result = invoke(
        "render", tmp_path / "a", "--samples", "2", "--steps", "3", "--no-gif"
    )
    assert result.exit_code == 0, result.output
    assert "--resume" not in result.output
    result = invoke("run", *TOY, "--direction", "ganspace", "--out", tmp_path / "a")
    assert result.exit_code != 0 and "choose another --out" in result.output


def test_sefa_on_a_generator_without_first_weights_is_one_line_and_writes_nothing(
    tmp_path,
):
    result = invoke("run", *TOY, "--direction", "sefa", "--out", tmp_path / "run")
    assert result.exit_code != 0
    assert (
        len(result.output.strip().splitlines()) == 1
        and "use --direction ganspace" in result.output
    )
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_the_baselines_plugin_is_found_through_its_entry_point():
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    assert "lclr-baselines" in result.output
    assert "ganspace" in result.output and "sefa" in result.output
