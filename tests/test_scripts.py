"""Scripts built on lclr (its benchmarks) end a user's error in one line,
as the command line does: a bad option, a malformed value, lclr's own
errors, a file system refusal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lclr.errors import ConfigError, UnknownComponentError
from lclr.scripts import ArgumentParser, run_main

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ["shapes_baseline", "gan_capacity", "step_speed", "distributed_step_time"]


def _script(name: str, *args: str, cwd: Path | None = None):
    path = ROOT / "benchmarks" / f"{name}.py"
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_benchmarks_bad_option_is_one_line_naming_help(name):
    result = _script(name, "--no-such-option")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "unrecognized arguments: --no-such-option" in lines[0]
    assert lines[0].endswith(f"See '{name}.py --help'.")


def test_a_malformed_generator_option_is_one_line(tmp_path):
    # found by review: "-G foo" ended in a ValueError's traceback
    result = _script("shapes_baseline", "-G", "truncation", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "shapes_baseline.py: error: -G takes KEY=VALUE, got 'truncation'. "
        "See 'shapes_baseline.py --help'."
    ]
    assert not any(tmp_path.iterdir())


def test_lclrs_own_error_in_a_benchmark_is_one_line(tmp_path):
    out = tmp_path / "base"
    result = _script(
        "shapes_baseline",
        "--generator", "no-such-gan", "--directions", "ganspace", "--seeds", "0",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == UnknownComponentError.exit_code
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "no-such-gan" in lines[0] and "Traceback" not in result.stderr


def test_run_main_turns_user_errors_into_one_line(capsys, tmp_path):
    def config_error():
        raise ConfigError("k must be at least 1; give -k 1 or more")

    with pytest.raises(SystemExit) as stop:
        run_main(config_error)
    assert stop.value.code == ConfigError.exit_code
    assert capsys.readouterr().err == "Error: k must be at least 1; give -k 1 or more\n"

    blocker = tmp_path / "a"
    blocker.write_text("")

    def make_folder_under_a_file():
        (blocker / "b").mkdir(parents=True)

    with pytest.raises(SystemExit) as stop:
        run_main(make_folder_under_a_file)
    assert stop.value.code == 6
    err = capsys.readouterr().err
    assert err == f"Error: {blocker} is a file, not a folder; choose another path\n"

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run_main(interrupted)
    assert stop.value.code == 130
    assert capsys.readouterr().err == "Error: interrupted\n"


def test_run_main_keeps_a_bugs_traceback():
    def bug():
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_main(bug)


def test_the_parser_ends_a_sentence_once(capsys):
    parser = ArgumentParser(prog="bench")
    with pytest.raises(SystemExit) as stop:
        parser.error("is it?")
    assert stop.value.code == 2
    assert capsys.readouterr().err == "bench: error: is it? See 'bench --help'.\n"


@pytest.mark.parametrize(
    "name, args, words",
    [
        # found by a tester: each of these was a traceback
        ("shapes_baseline", ["--threads", "0"], "--threads: must be at least 1"),
        ("step_speed", ["--threads", "-1"], "--threads: must be at least 1"),
        ("shapes_baseline", ["--seeds", "0,,1"], "--seeds takes whole numbers"),
        ("step_speed", ["--generator", "nope"], "unknown generator 'nope'"),
        ("distributed_step_time", ["--steps", "1"], "--steps must be 2 or more, got 1"),
        (
            "distributed_step_time",
            ["--steps", "3", "--warmup", "2"],
            "0 to --steps - 2 (1)",
        ),
        ("distributed_step_time", ["--warmup", "-3"], "--warmup must be 0 to"),
    ],
)
def test_a_benchmarks_bad_value_is_one_line_before_any_work(name, args, words):
    result = _script(name, *args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_an_output_under_a_file_is_named_as_such(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    result = _script("gan_capacity", "--out", str(blocker / "x.json"), "--steps", "1")
    assert result.returncode == 2
    assert f"{blocker} is a file, not a folder" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_baseline_left_by_other_settings_is_refused_not_scored(tmp_path):
    # found by review: a run of another --layer was scored as this one
    from lclr import runfolder
    from lclr.config import RunConfig

    folder = tmp_path / "ganspace-seed0"
    folder.mkdir()
    left = RunConfig(
        generator="stylegan2", direction="ganspace", k=8, alpha=3.0,
        batch_size=16, iterations=600, seed=0, layer="another",
    )  # fmt: skip
    runfolder.write_config(folder, left)
    (folder / "directions.json").write_text("{}")
    result = _script(
        "shapes_baseline", "--directions", "ganspace", "--seeds", "0",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == ConfigError.exit_code
    assert result.stderr.splitlines() == [
        f"Error: {folder} holds a run with other settings (layer); remove it "
        "or choose another --out"
    ]
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "directions.json",
    ]
