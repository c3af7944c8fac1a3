"""A local run SIGKILLed during Transform, during training or during the push, then run again, ends as an
uninterrupted run does: the same verdict, one whole version in the serving dir, nothing of the killed execution
used, no staging folder left.

Every run is `terrafuse run` (`python -m pipeline.cli`, what `make run` calls) in a process of its own and its own
session, killed with its whole process group, on four tiny scenes for one epoch; each test has its own pipeline
root, and one uninterrupted run, beside the first test's, gives the reference verdict. Each test polls its
pipeline root for its kill point: Transform's temporary folder (analysis under way) or the Trainer's first
TensorBoard event file (an epoch under way). A push copies this model (450 kB) and renames it within a few
milliseconds, under any polling interval, so the push's kill points are held open by the run itself
(PAUSE_IN_PUSH): mid-copy, or just after the rename, it says so in a file and sleeps until the test kills it.
Nothing else in that run is changed.
"""
import filecmp
import glob
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import yaml
from ml_metadata.proto import metadata_store_pb2

from components.atomic_pusher import LOCK_FILE, STAGING_PREFIX
from foundation.config import PROJECT_DIR, Config, load_config
from foundation.published import SOURCE_MARKER, model_versions, published_source
from pipeline.component_ids import EVALUATOR, PUSHER, SCENE_EXAMPLE_GEN, TRAINER, TRANSFORM
from pipeline.local import run_local
from pipeline.summary import last_run, open_store, output, run_ids
from schemas.curated import write_schema
from tiny_scenes import write_scene

pytestmark = pytest.mark.slow

RUNNING = metadata_store_pb2.Execution.RUNNING
COMPLETE = metadata_store_pb2.Execution.COMPLETE
CACHED = metadata_store_pb2.Execution.CACHED
RUN_SECONDS = 600  # a whole run took 40 to 60 s here

# The four classes the tiny scenes hold; 7 x 7 patches (the smallest the CNN takes) in blocks of 10 give 1,500
# train, 250 validation and 360 test patches (49 of road, the rarest). One epoch of a small CNN reaches recall 0.82
# to 1.0 per class: the floor is set well below, so the verdict does not hang on CPU training's nondeterminism.
CONFIG = {
    "classes": [{"id": 10, "name": "trees"}, {"id": 30, "name": "grass"}, {"id": 50, "name": "building"},
                {"id": 55, "name": "road"}],
    "ingest": {"patch_size": 7, "block_size": 10},
    "validation": {"lidar_skew_js_max": 0.5},  # tiny identical scenes: heights split unevenly by block (0.23)
    "model": {"epochs": 1, "branch_filters": [8, 16], "fused_filters": 16, "dense_units": 16},
    "gate": {"min_class_recall": 0.5, "min_test_examples_per_class": 5},
}

# The child's push stops at `point` and waits to be killed: "copy", with saved_model.pb alone copied into the staging
# folder; "rename", just after the staging folder became a version. Every other copy and rename is left alone.
PAUSE_IN_PUSH = """
import os, shutil, sys, time
from foundation.environment import prepare_tensorflow
prepare_tensorflow()
from tfx.utils import io_utils
from components.atomic_pusher import STAGING_PREFIX
copy_dir, rename = io_utils.copy_dir, os.rename

def wait_to_be_killed():
    open({ready!r}, "w").close()
    time.sleep(600)

def copy_half(src, dst, *args, **kwargs):
    if not os.path.basename(dst).startswith(STAGING_PREFIX):
        return copy_dir(src, dst, *args, **kwargs)
    os.makedirs(dst)
    shutil.copy(os.path.join(src, "saved_model.pb"), dst)
    wait_to_be_killed()

def rename_then_wait(src, dst):
    rename(src, dst)
    if os.path.basename(src).startswith(STAGING_PREFIX):
        wait_to_be_killed()

if {point!r} == "copy":
    io_utils.copy_dir = copy_half
else:
    os.rename = rename_then_wait
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass(frozen=True)
class Scenes:
    data_root: str
    config_file: str


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("killed")
    for i in range(4):
        write_scene(root / "data", f"scene-{i:03d}")
    config_file = root / "config.yaml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    # 7 x 7 patches: the curated schema's shapes must say so.
    schema = write_schema(load_config(str(config_file)), root / "schema.pbtxt")
    config_file.write_text(yaml.safe_dump({**CONFIG, "run": {"schema_file": str(schema)}}))
    return Scenes(str(root / "data"), str(config_file))


def _config(scenes, pipeline_root):
    return load_config(scenes.config_file, [f"run.data_root={scenes.data_root}", f"run.pipeline_root={pipeline_root}"])


def _start(scenes, pipeline_root, log, code=None):
    """`terrafuse run` in a new session; `code` replaces `python -m pipeline.cli` with `python -c code`."""
    argv = ["run", "--config", scenes.config_file, "--data-root", scenes.data_root, "--pipeline-root", pipeline_root]
    command = [sys.executable, *(["-c", code] if code else ["-m", "pipeline.cli"]), *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")]))}
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=os.path.dirname(log), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _kill(process):
    os.killpg(process.pid, signal.SIGKILL)
    return process.wait(timeout=60)


def _run(scenes, pipeline_root, log):
    process = _start(scenes, pipeline_root, log)
    try:
        assert process.wait(timeout=RUN_SECONDS) == 0, open(log).read()[-5000:]
    finally:
        if process.poll() is None:
            _kill(process)


def _kill_when(process, ready, log, what):
    """SIGKILL the run's whole process group as soon as `ready()`; the run must not end before."""
    deadline = time.monotonic() + RUN_SECONDS
    try:
        while not ready():
            ended = process.poll()
            assert ended is None, f"the run ended ({ended}) before {what}:\n" + open(log).read()[-5000:]
            assert time.monotonic() < deadline, f"no {what} after {RUN_SECONDS} s"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            assert _kill(process) == -signal.SIGKILL


@dataclass(frozen=True)
class Verdict:
    blessed: bool
    pushed: bool
    versions: int  # in the serving dir
    pushed_the_newest: bool  # the version the Pusher recorded is the newest in the serving dir


def _verdict(config):
    runs = last_run(config)
    blessing, pushed = output(runs, EVALUATOR, "blessing"), output(runs, PUSHER, "pushed_model")
    versions = model_versions(config.serving_dir)
    return Verdict(blessing.custom_properties["blessed"].int_value == 1,
                   pushed.custom_properties["pushed"].int_value == 1, len(versions),
                   bool(versions) and pushed.custom_properties["pushed_version"].string_value == versions[-1])


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory):
    """The verdict of an uninterrupted run on the same scenes and config, as a function. The run starts at once and
    is waited for when first needed, so it runs beside the first test's own run: a run here is mostly one busy
    thread, and the machines have two cores."""
    root = tmp_path_factory.mktemp("reference")
    log, config = str(root / "run.log"), _config(scenes, str(root / "pipeline"))
    process = _start(scenes, config.run.pipeline_root, log)
    verdicts = []

    def verdict():
        if not verdicts:
            assert process.wait(timeout=RUN_SECONDS) == 0, open(log).read()[-5000:]
            assert {run.state for run in last_run(config)} == {"COMPLETE"}
            verdicts.append(_verdict(config))
        return verdicts[0]

    yield verdict
    if process.poll() is None:  # no test needed it, or one failed before
        _kill(process)


def _run_context(store, config):
    """The newest run's context."""
    (context,) = [c for c in store.get_contexts_by_type("pipeline_run") if c.name == run_ids(config)[-1]]
    return context


@dataclass(frozen=True)
class Killed:
    execution_id: int
    folders: list  # its output folders, <root>/<node>/<key>/<execution id>


def _killed(config, node):
    """The node's execution in the newest run, left RUNNING by the kill with no output recorded."""
    store = open_store(config.metadata_path)
    node_context = store.get_context_by_type_and_name("node", f"{config.run.pipeline_name}.{node}")
    in_run = {e.id for e in store.get_executions_by_context(_run_context(store, config).id)}
    (killed,) = [e for e in store.get_executions_by_context(node_context.id) if e.id in in_run]
    assert killed.last_known_state == RUNNING
    assert not [e for e in store.get_events_by_execution_ids([killed.id]) if e.type == metadata_store_pb2.Event.OUTPUT]
    folders = glob.glob(os.path.join(config.run.pipeline_root, node, "*", str(killed.id)))
    assert folders, f"no output folder of the killed {node} execution {killed.id}"
    return Killed(killed.id, folders)


def _whole_versions(config):
    """The serving dir holds versions only (no staging folder), each a whole copy of the model it was published
    from, plus its source marker; returns them."""
    serving = config.serving_dir
    versions = model_versions(serving)
    assert sorted(os.listdir(serving)) == sorted([*versions, LOCK_FILE]), "only versions, no staging folder"
    for version in versions:
        folder = os.path.join(serving, version)
        assert os.path.isfile(os.path.join(folder, "saved_model.pb"))
        assert glob.glob(os.path.join(folder, "variables", "variables.data-*"))
        source = published_source(folder)
        copied = {os.path.relpath(os.path.join(d, f), source) for d, _, files in os.walk(source) for f in files}
        assert copied and all(filecmp.cmp(os.path.join(source, f), os.path.join(folder, f), shallow=False)
                              for f in copied)
        assert {os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder)
                for f in files} == copied | {SOURCE_MARKER}
    return versions


def _check_rerun(config, reference, *killed):
    """Same verdict as the reference, whole versions only; every artifact the rerun consumed was produced by
    COMPLETE executions (some reused since by CACHED ones), none by a killed one, and nothing in ML Metadata points
    into a killed execution's folders."""
    assert _verdict(config) == reference()
    runs = last_run(config)
    assert {run.state for run in runs} <= {"COMPLETE", "CACHED"}, {run.node: run.state for run in runs}
    newest = os.path.join(config.serving_dir, _whole_versions(config)[-1])
    assert output(runs, PUSHER, "pushed_model").custom_properties["pushed_destination"].string_value == newest

    store = open_store(config.metadata_path)
    killed_ids = {k.execution_id for k in killed}
    assert {e.last_known_state for e in store.get_executions_by_id(list(killed_ids))} == {RUNNING}  # never revisited
    executions = store.get_executions_by_context(_run_context(store, config).id)
    inputs = {e.artifact_id for e in store.get_events_by_execution_ids([e.id for e in executions])
              if e.type == metadata_store_pb2.Event.INPUT}
    producers = {}
    for event in store.get_events_by_artifact_ids(list(inputs)):
        if event.type == metadata_store_pb2.Event.OUTPUT:
            producers.setdefault(event.artifact_id, []).append(event.execution_id)
    assert set(producers) == inputs, "every input has a producer"
    consumed = store.get_artifacts_by_id(list(inputs))
    for artifact in consumed:
        assert artifact.state == metadata_store_pb2.Artifact.LIVE
        states = {e.id: e.last_known_state for e in store.get_executions_by_id(producers[artifact.id])}
        assert not killed_ids & set(states), artifact.uri
        assert COMPLETE in states.values() and set(states.values()) <= {COMPLETE, CACHED}, artifact.uri
    # The pushed version is a copy of a Trainer model the rerun consumed.
    assert os.path.dirname(published_source(newest)) in {a.uri for a in consumed if a.uri.startswith(
        os.path.join(config.run.pipeline_root, TRAINER, "model") + os.sep)}
    folders = [f for k in killed for f in k.folders]
    for artifact in store.get_artifacts():
        assert not any(artifact.uri == f or artifact.uri.startswith(f + os.sep) for f in folders), artifact.uri


def _states(config):
    return {run.node: run.state for run in last_run(config)}


def test_a_run_killed_during_transform_reruns_to_the_same_verdict(scenes, reference, tmp_path):
    root, log = str(tmp_path / "pipeline"), str(tmp_path / "run.log")
    config = _config(scenes, root)
    analysing = os.path.join(root, TRANSFORM, "transform_graph", "*", ".temp_path")
    _kill_when(_start(scenes, root, log), lambda: glob.glob(analysing), log, "Transform's analysis")
    killed = _killed(config, TRANSFORM)
    assert _states(config)[SCENE_EXAMPLE_GEN] == "COMPLETE" and TRAINER not in _states(config)
    graph = os.path.join(root, TRANSFORM, "transform_graph", str(killed.execution_id))
    assert not os.path.exists(os.path.join(graph, "transform_fn")), "killed before Transform wrote its graph"

    _run(scenes, root, log)
    assert _states(config)[SCENE_EXAMPLE_GEN] == "CACHED" and _states(config)[TRANSFORM] == "COMPLETE"
    _check_rerun(config, reference, killed)


def test_a_run_killed_during_training_reruns_to_the_same_verdict(scenes, reference, tmp_path):
    root, log = str(tmp_path / "pipeline"), str(tmp_path / "run.log")
    config = _config(scenes, root)
    events = os.path.join(root, TRAINER, "model_run", "*", "train", "events.out.tfevents.*")
    _kill_when(_start(scenes, root, log), lambda: glob.glob(events), log, "a TensorBoard event file")
    killed = _killed(config, TRAINER)
    assert _states(config)[TRANSFORM] == "COMPLETE"
    assert not glob.glob(os.path.join(root, TRAINER, "model", str(killed.execution_id), "*")), "killed before export"

    _run(scenes, root, log)
    assert _states(config)[TRANSFORM] == "CACHED" and _states(config)[TRAINER] == "COMPLETE"
    _check_rerun(config, reference, killed)


def test_a_run_killed_during_the_push_reruns_to_the_same_verdict_and_one_version(scenes, reference, tmp_path):
    """Killed mid-copy; the rerun killed just after its rename, before TFX recorded the push; then a last run. The
    half-copied staging folder goes, and the version TFX never recorded is not published a second time."""
    root, log, ready = str(tmp_path / "pipeline"), str(tmp_path / "run.log"), str(tmp_path / "pausing")
    config = _config(scenes, root)
    serving = config.serving_dir
    process = _start(scenes, root, log, code=PAUSE_IN_PUSH.format(point="copy", ready=ready))
    _kill_when(process, lambda: os.path.exists(ready), log, "the copy into the staging folder")
    mid_copy = _killed(config, PUSHER)
    assert _states(config)[EVALUATOR] == "COMPLETE"
    (staging,) = [os.path.join(serving, name) for name in os.listdir(serving) if name.startswith(STAGING_PREFIX)]
    assert os.listdir(staging) == ["saved_model.pb"], "a half-copied model"
    assert model_versions(serving) == []

    os.remove(ready)
    process = _start(scenes, root, log, code=PAUSE_IN_PUSH.format(point="rename", ready=ready))
    _kill_when(process, lambda: os.path.exists(ready), log, "the rename into a version")
    after_rename = _killed(config, PUSHER)
    assert _states(config)[TRAINER] == _states(config)[EVALUATOR] == "CACHED"
    assert f"Removing {staging}, left by an interrupted push" in open(log).read()
    (version,) = _whole_versions(config)

    _run(scenes, root, log)
    assert _states(config)[PUSHER] == "COMPLETE"
    assert model_versions(serving) == [version]
    _check_rerun(config, reference, mid_copy, after_rename)


def test_a_run_that_never_reaches_the_pusher_still_removes_staging_folders(tmp_path):
    """Here the run stops at its first component (no span): a staging folder must not wait for the next push."""
    config = Config().replace({"run.data_root": str(tmp_path / "empty"), "run.pipeline_root": str(tmp_path / "root")})
    os.makedirs(tmp_path / "empty")
    staging = os.path.join(config.serving_dir, f"{STAGING_PREFIX}dead")
    os.makedirs(os.path.join(staging, "variables"))
    assert not run_local(config)
    assert PUSHER not in {run.node for run in last_run(config)}
    assert os.listdir(config.serving_dir) == [LOCK_FILE]
