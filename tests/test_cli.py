"""The command line, end to end through click's runner on the toy generator."""

import json

import pytest
import torch
from click.testing import CliRunner

from lclr.cli import cli

pytestmark = pytest.mark.usefixtures("fresh_registry")

TINY = [
    "--generator", "toy", "--layer", "conv1", "--direction", "linear",
    "-k", "3", "--batch-size", "4", "--alpha", "1.0", "--checkpoint-every", "4",
]  # fmt: skip


def invoke(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def test_run_resume_render(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", *TINY, "--iterations", "6", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"run folder:  {out}" in result.output
    for name in ("config.json", "state.pt", "directions.safetensors",
                 "directions.json", "metrics.jsonl", "images/grid.png"):  # fmt: skip
        assert (out / name).exists(), name
    assert len(list((out / "images").glob("direction_*.gif"))) == 3

    result = invoke("run", "--resume", out, "--iterations", "10", "--no-render")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "directions.json").read_text())["step"] == 10

    result = invoke("render", out, "--samples", "2", "--steps", "5", "--no-gif")
    assert result.exit_code == 0, result.output
    from PIL import Image

    grid = Image.open(out / "images" / "grid.png")
    assert grid.height == 3 * 96  # a row per direction, 8 px cells shown at 96 px


def test_resumed_cli_run_equals_an_uninterrupted_one(tmp_path):
    from safetensors.torch import load_file

    assert invoke("run", *TINY, "--iterations", "8", "--out", tmp_path / "a",
                  "--no-render").exit_code == 0  # fmt: skip
    assert invoke("run", *TINY, "--iterations", "3", "--out", tmp_path / "b",
                  "--no-render").exit_code == 0  # fmt: skip
    assert invoke("run", "--resume", tmp_path / "b", "--iterations", "8",
                  "--no-render").exit_code == 0  # fmt: skip
    a = load_file(tmp_path / "a" / "directions.safetensors")
    b = load_file(tmp_path / "b" / "directions.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_one_process_samples_every_stream_of_world_size(tmp_path):
    from lclr.runfolder import load_state

    out = tmp_path / "r"
    result = invoke("run", *TINY, "--iterations", "4", "--world-size", "2",
                    "--out", out, "--no-render")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    rngs = load_state(out / "state.pt")["rngs"]
    assert len(rngs) == 2 and not torch.equal(rngs[0], rngs[1])
    result = invoke("run", "--resume", out, "--world-size", "1")
    assert result.exit_code == 2 and "drop --world-size" in result.output


def test_python_m_lclr_is_the_cli():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "lclr", "run", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--world-size" in result.stdout


def test_config_file_and_options(tmp_path):
    (tmp_path / "c.toml").write_text(
        'generator = "toy"\nlayer = "conv2"\nk = 2\nbatch_size = 3\n'
        "iterations = 2\n[generator_options]\nwidth = 4\n"
    )
    out = tmp_path / "run"
    result = invoke("run", "--config", tmp_path / "c.toml", "-k", "4",
                    "-D", "hidden=16", "--direction", "nonlinear",
                    "--out", out, "--no-render")  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["k"] == 4 and saved["layer"] == "conv2"
    assert saved["generator_options"] == {"width": 4}


def test_plugins_lists_distributions_and_components():
    result = invoke("plugins")
    assert result.exit_code == 0
    assert "lclr-toy 0.0.1" in result.output
    assert "lclr-directions" in result.output and "nonlinear" in result.output


def test_layers_lists_shapes():
    result = invoke("layers", "--generator", "toy")
    assert result.exit_code == 0
    assert "conv2        8x8x8" in result.output


ERRORS = [
    (["run", "--generator", "nope"], "unknown generator 'nope'; installed:"),
    (["run", *TINY, "--direction", "curvy"], "unknown direction model 'curvy'"),
    (["run", *TINY, "--objective", "mse"], "unknown objective 'mse'"),
    (["run", *TINY, "--layer", "conv9"], "unknown layer 'conv9'; toy has: fc, conv1"),
    (["run", *TINY, "-k", "1"], "K (-k) must be at least 2"),
    (["run", *TINY, "--batch-size", "1"], "batch size N must be at least 2"),
    (["run", *TINY, "--alpha", "0"], "alpha must be greater than 0"),
    (["run", *TINY, "--alpha", "-1"], "alpha must be greater than 0"),
    (["run", *TINY, "--edit-layers", "7"], "--edit-layers 7 is out of range"),
    (["run", *TINY, "--edit-layers", "a-b"], "must look like 0-3,6"),
    (["run", *TINY, "-G", "colour=red"], "has no option colour"),
    (["run", *TINY, "-G", "novalue"], "must look like KEY=VALUE"),
    (["run", *TINY, "--device", "gpu7"], "unknown device 'gpu7'"),
    (["layers", "--generator", "nope"], "unknown generator 'nope'"),
    (["run", *TINY, "--edit-layers", "3-1"], "must look like 0-3,6"),
    (["run", *TINY, "--class", "1"], "'toy' is not class-conditional; drop --class"),
    (["run", *TINY, "-O", "variant=foo"], "'variant' must be in ('paper', 'authors')"),
    (["run", *TINY, "--temperature", "0.5", "-O", "temperature=0.1"], "disagree"),
    (["run", *TINY, "--device", "meta"], "unknown device 'meta'"),
    (["run", *TINY, "--alpha", "inf"], "alpha must be greater than 0 and finite"),
    (["run", *TINY, "--grad-clip", "0"], "--grad-clip must be greater than 0"),
    (["run", *TINY, "--world-size", "0"], "world_size must be at least 1"),
    (["render", "/no/such/run"], "does not exist"),
    (["eval", "/no/such/run", "--evaluator", "nope"], "unknown evaluator 'nope'"),
]


@pytest.mark.parametrize("args, message", ERRORS)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    result = (
        invoke(*args, "--out", tmp_path / "x") if args[0] == "run" else invoke(*args)
    )
    assert result.exit_code >= 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_bad_weights_files_are_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    for path, needle in [(text, "is not a toy checkpoint"), (wrong, "that fits")]:
        result = invoke("run", *TINY, "--weights", path, "--out", tmp_path / "o")
        assert result.exit_code == 4, result.output
        assert len(result.output.strip().splitlines()) == 1
        assert needle in result.output
    assert not (tmp_path / "o").exists()


def test_errors_leave_an_existing_run_untouched(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", *TINY, "--iterations", "2", "--out", out,
                  "--no-render").exit_code == 0  # fmt: skip
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for args in (
        ["run", *TINY, "--out", out],
        ["run", "--resume", out, "-k", "5"],
        ["run", "--resume", out, "--iterations", "0"],
    ):
        result = invoke(*args)
        assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after


def test_more_errors_found_by_trying_to_break_it(tmp_path):
    # Each of these once ended in a traceback or a misleading message.
    file = tmp_path / "file"
    file.write_text("x")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "frac.toml").write_text("k = 4.7\n")
    state_is_tensor = tmp_path / "tensor-run"
    assert invoke("run", *TINY, "--iterations", "2", "--out", state_is_tensor,
                  "--no-render").exit_code == 0  # fmt: skip
    torch.save(torch.zeros(3), state_is_tensor / "state.pt")
    cases = [
        (["run", *TINY, "--out", file / "sub"], "is a file, not a folder"),
        (["run", "--config", tmp_path / "list.json"], "not list"),
        (["run", "--config", tmp_path / "frac.toml"], "k: expected an integer"),
        (["run", "--resume", state_is_tensor, "--iterations", "5"], "not an lclr"),
        (["eval", file], "is a file, not a run folder"),
        (["run", "--resume", file], "is a file, not a run folder"),
    ]  # fmt: skip
    for args, message in cases:
        result = invoke(*args)
        lines = result.output.strip().splitlines()
        assert result.exit_code >= 2 and len(lines) == 1, (args, result.output)
        assert message in lines[0], (args, lines[0])


def test_resume_flags_are_named_as_typed(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", *TINY, "--iterations", "2", "--out", out,
                  "--no-render").exit_code == 0  # fmt: skip
    result = invoke("run", "--resume", out, "-k", "4", "--config", "c.toml")
    assert "drop --config, -k" in result.output
    result = invoke("run", "--resume", out, "--out", tmp_path / "other")
    assert "drop --out" in result.output and not (tmp_path / "other").exists()


def test_resume_to_a_total_already_reached_is_refused(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", *TINY, "--iterations", "4", "--out", out,
                  "--no-render").exit_code == 0  # fmt: skip
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = invoke("run", "--resume", out, "--iterations", "3")
    assert result.exit_code == 2 and "already at step 4" in result.output
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_a_run_that_fails_before_its_first_step_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    # An edit to the toy's last code cannot change its first layer: error.
    result = invoke("run", *TINY, "--layer", "fc", "--edit-layers", "2", "--out", out)
    assert result.exit_code == 2 and "unchanged" in result.output
    assert not out.exists()


def test_default_run_folders_never_collide(tmp_path):
    from lclr.runfolder import claim_new_folder

    first = claim_new_folder(tmp_path / "runs" / "toy-linear-20261204-120000")
    second = claim_new_folder(tmp_path / "runs" / "toy-linear-20261204-120000")
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == "toy-linear-20261204-120000-2"


def test_plugins_says_when_lclr_plugins_matches_nothing(monkeypatch):
    monkeypatch.setenv("LCLR_PLUGINS", "nope")
    result = CliRunner().invoke(cli, ["plugins"])
    assert "LCLR_PLUGINS names no installed plugin: nope" in result.output


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    result = invoke("run", "--resume", tmp_path)
    assert result.exit_code == 5
    assert "not an lclr run folder" in result.output


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys\nfrom lclr.cli import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "plugins" in result.stdout


def test_the_shapes_evaluator_refuses_a_generator_of_another_world(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", *TINY, "--iterations", "2", "--out", out,
                  "--no-render").exit_code == 0  # fmt: skip
    result = invoke("eval", out)
    assert result.exit_code == 2
    assert "reads 3x32x32 images of the shapes world" in result.output


def test_memory_and_device_options_reach_the_config_and_resume(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", *TINY, "--iterations", "2", "--chunk-size", "5",
                    "--max-memory", "2", "--no-autocast", "--no-render",
                    "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert (config["chunk_size"], config["max_memory"]) == (5, 2.0)
    assert (config["autocast"], config["compile"]) == (False, False)
    result = invoke("run", "--resume", out, "--iterations", "3", "--chunk-size",
                    "7", "--channels-last", "--no-render")  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert (config["chunk_size"], config["channels_last"]) == (7, True)
    result = invoke("run", *TINY, "--max-memory", "-1", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--max-memory must be greater" in result.output


def test_resuming_a_folder_without_state_says_how_to_go_on(tmp_path):
    # Found in review: a run stopped at once (two Ctrl-C) leaves a folder
    # with no state; the old line named no way forward.
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{}")
    result = CliRunner().invoke(cli, ["run", "--resume", str(tmp_path / "r")])
    assert result.exit_code != 0
    text = str(result.exception) + result.output
    assert "cannot be resumed" in text and "delete the folder" in text


@pytest.mark.parametrize("under", ["afile/sub", "afile/sub/deeper"])
def test_a_file_where_a_folder_is_needed_is_named(tmp_path, under):
    # Found in review: "File exists: out/afile; check the path and its
    # rights" for --out under a file, which reads as if it were a folder.
    (tmp_path / "afile").write_text("kept")
    args = ["-q", "run", "--out", str(tmp_path / under), "--iterations", "1",
            "-k", "2", "--no-render"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 6
    assert f"{tmp_path / 'afile'} is a file, not a folder" in result.output
    assert (tmp_path / "afile").read_text() == "kept"


@pytest.mark.parametrize(
    "args, where",
    [
        (["run", "--steps", "3"], "lclr run"),  # no such option
        (["run", "--batch-size", "x"], "lclr run"),  # not a number
        (["shapes", "quality", "-n", "x"], "lclr shapes quality"),
        (["bogus"], "lclr"),  # no such command
        (["--bogus"], "lclr"),  # an option of lclr itself
        (["run", "--generator"], "lclr run"),  # no value: the error has no ctx
        (["shapes", "quality", "-n"], "lclr shapes quality"),
        (["render", "a", "b"], "lclr render"),
    ],
)
def test_usage_errors_are_one_line_naming_the_help(args, where):
    result = CliRunner().invoke(cli, args, prog_name="lclr")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and f"See '{where} --help'." in lines[0]
    assert any(f"{end} See" in lines[0] for end in (".", "?", "?)"))


@pytest.mark.parametrize("args", [[], ["shapes"]])
def test_a_bare_group_prints_its_help_not_an_error(args):
    # found in review: click's no-arguments help is a usage error too
    result = CliRunner().invoke(cli, args, prog_name="lclr")
    assert result.output.startswith("Usage: ") and "Error" not in result.output


def test_the_recipe_command_reports_usage_errors_in_one_line(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lclr_shapes.gan.train", "--out", str(tmp_path)]
        + ["--batch-size", "q"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "Error: Invalid value for '--batch-size': 'q' is not a valid integer. "
        "See 'python -m lclr_shapes.gan.train --help'."
    ]


def test_ctrl_c_before_a_run_trains_leaves_no_claimed_folder(tmp_path, monkeypatch):
    # found in review: Ctrl-C while a run was being built (or a closed-form
    # model fitted), without --out, left an empty runs/<name> folder behind
    import lclr.training

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lclr.training, "build_components", ctrl_c)
    result = invoke("run", *TINY, "--iterations", "2", "--no-render")
    assert result.exit_code == 130
    assert not any((tmp_path / "runs").iterdir())
