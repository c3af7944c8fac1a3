"""The command line: clear errors before any pipeline work, and the light commands end to end."""
import subprocess
import sys

import pytest

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
    assert sorted(p.name for p in (tmp_path / "d").glob("span-*")) == ["span-0001", "span-0002"]
    assert main(["schema", "--set", "streams.lidar_channels=[height, intensity, density]",
                 "--out", str(tmp_path / "s.pbtxt")]) == 0
    assert 'name: "lidar_density"' in (tmp_path / "s.pbtxt").read_text()


def test_help_does_not_import_tensorflow():
    code = "import sys; from pipeline.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
           "assert 'tensorflow' not in sys.modules, 'terrafuse --help imported TensorFlow'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_bench_command_hands_its_options_to_the_bench(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "python -m bench.run" in out and "--ablation-cells" in out
    with pytest.raises(SystemExit) as stop:  # other commands still refuse options they do not know
        main(["report", "--ablation-cells", "all"])
    assert stop.value.code == 2 and "unrecognized arguments: --ablation-cells all" in capsys.readouterr().err
