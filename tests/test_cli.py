"""The command line: clear errors before any pipeline work, the light commands end to end, and each command's
options."""
import re
import subprocess
import sys

import pytest

from foundation.config import PROJECT_DIR
from foundation.scene_folder import SPAN_PREFIX, span_folder
from pipeline.cli import main


def test_run_without_spans_says_how_to_make_them(tmp_path, capsys):
    assert main(["run", "--data-root", str(tmp_path), "--pipeline-root", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: no span-NNNN folders" in err and "terrafuse sample-scenes" in err


def test_bad_override_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--data-root", str(tmp_path), "--set", "model.epochs=many"]) == 2
    assert "model.epochs must be an integer, got 'many'" in capsys.readouterr().err


def test_sample_scenes_and_schema_commands(tmp_path, capsys):
    assert main(["sample-scenes", "--out", str(tmp_path / "d"), "--spans", "2", "--scenes", "1", "--size", "48"]) == 0
    assert sorted(p.name for p in (tmp_path / "d").glob(f"{SPAN_PREFIX}*")) == [span_folder(1), span_folder(2)]
    assert main(["schema", "--set", "streams.lidar_channels=[height, intensity, density]",
                 "--out", str(tmp_path / "s.pbtxt")]) == 0
    assert 'name: "lidar_density"' in (tmp_path / "s.pbtxt").read_text()


@pytest.mark.parametrize("argv", [["--help"], ["kubeflow", "schedule", "--help"], ["report", "--help"],
                                  ["predict", "--help"]])
def test_help_does_not_import_the_heavy_packages(argv):
    code = f"import sys; from pipeline.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n" \
           "heavy = sorted({'tensorflow', 'tfx', 'kfp'} & set(sys.modules))\n" \
           "assert not heavy, f'terrafuse --help imported {heavy}'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_no_bench_command_and_unknown_options_are_refused(capsys):
    """The benchmark is not in the image, so the CLI offers none (`make bench` runs it from a checkout)."""
    with pytest.raises(SystemExit) as stop:
        main(["bench"])
    assert stop.value.code == 2 and "invalid choice: 'bench'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["report", "--ablation-cells", "all"])
    assert stop.value.code == 2 and "unrecognized arguments: --ablation-cells all" in capsys.readouterr().err


def _terrafuse(*argv: str) -> subprocess.CompletedProcess:
    """The CLI in its own process: logging is configured as a user's shell gets it (pytest's handlers aside)."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], capture_output=True, text=True)


def test_verbose_after_the_command_shows_the_traceback_of_a_failure(tmp_path):
    bad = ["--data-root", str(tmp_path), "--set", "model.epochs=many"]
    quiet, before, after = _terrafuse("run", *bad), _terrafuse("-v", "run", *bad), _terrafuse("run", *bad, "-v")
    for result in (quiet, before, after):
        assert result.returncode == 2 and "model.epochs must be an integer, got 'many'" in result.stderr
    assert "Traceback" not in quiet.stderr
    for verbose in (before, after):
        assert "Traceback (most recent call last)" in verbose.stderr and "ConfigError" in verbose.stderr


@pytest.mark.slow  # a process that loads TFX: 15-30 s
def test_verbose_shows_the_traceback_of_the_error_that_stopped_a_run(tmp_path):
    """The run's own failure (here: the curated schema lacks a configured LiDAR channel) was logged at DEBUG."""
    (tmp_path / "data" / span_folder(1)).mkdir(parents=True)
    result = _terrafuse("run", "--data-root", str(tmp_path / "data"), "--pipeline-root", str(tmp_path / "out"),
                        "--set", "streams.lidar_channels=[height, intensity, density]", "-v")
    assert result.returncode == 1 and "Run stopped: ConfigError" in result.stdout, result.stderr[-2000:]
    assert "Traceback (most recent call last)" in result.stderr and "schema has no entry for" in result.stderr
    assert "Report:" not in result.stdout  # the run never began: there is no page of it to write


def test_version_is_the_installed_package_version_setup_py_declares(capsys):
    declared = re.search(r'version="([^"]+)"', (PROJECT_DIR / "setup.py").read_text()).group(1)
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"terrafuse {declared}"


CONFIG_OPTIONS = {"--config", "--set"}
ROOTS = {"--data-root", "--pipeline-root"}
OPTIONS = {
    ("run",): CONFIG_OPTIONS | ROOTS | {"--generate-sample-if-missing"},
    ("predict",): {"--model", "--scene", "--data-root", "--span", "--out", "--tile-size", "--probabilities"},
    ("report",): {"--pipeline-root", "--run", "--html"},
    ("sample-scenes",): CONFIG_OPTIONS | {"--out", "--spans", "--scenes", "--size", "--seed", "--shifted-span"},
    ("schema",): CONFIG_OPTIONS | {"--out"},
    ("kubeflow", "compile"): CONFIG_OPTIONS | ROOTS,
    ("kubeflow", "submit"): CONFIG_OPTIONS | ROOTS | {"--host", "--no-data-check"},
    ("kubeflow", "schedule"): CONFIG_OPTIONS | ROOTS | {"--host", "--no-data-check", "--cron", "--list", "--disable"},
}


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_each_commands_help_lists_only_the_options_it_uses(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    listed = set(re.findall(r"^\s+(?:-\w, )?(--[\w-]+)", capsys.readouterr().out, re.MULTILINE))
    assert listed == OPTIONS[command] | {"--help", "--verbose"}


def test_predict_takes_scenes_or_a_span(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--model", str(tmp_path), "--data-root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert stop.value.code == 2 and "predict --data-root needs --span" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--model", str(tmp_path), "--scene", str(tmp_path), "--data-root", str(tmp_path),
              "--span", "1", "--out", str(tmp_path / "o")])
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_predict_refusing_a_model_is_an_error_line(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path), "--scene", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}")
