"""The command line: clear errors before any pipeline work, and the light commands end to end."""
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("argv", [["--help"], ["kubeflow", "schedule", "--help"]])
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
