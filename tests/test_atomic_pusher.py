"""A push is all or nothing, one at a time, only over the model it was judged against, and never a rollback."""
import fcntl
import multiprocessing
import os
import shutil
import signal
import threading
import time

import pytest
from tfx.components.evaluator import constants as evaluator_constants
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import atomic_pusher
from components.atomic_pusher import (LOCK_FILE, NOT_PUSHED_REASON_PROPERTY, STAGING_PREFIX, AtomicPusherExecutor,
                                      PushError, StaleBaseline, SupersededModel, clean_interrupted_pushes,
                                      publish_atomically)
from components.baseline import PublishedBaseline, newest_published_elsewhere
from foundation.config import Config
from foundation.published import SOURCE_MARKER, latest_published, model_versions, published_source
from pipeline.component_ids import BASELINE

REPETITIONS = 10
FILES = ("saved_model.pb", "fingerprint.pb", os.path.join("variables", "variables.index"),
         os.path.join("variables", "variables.data-00000-of-00001"), os.path.join("assets", "vocabulary.txt"))


def _model(folder, tag="model", size=1000):
    """A model folder whose every file says which model it is and ends in a mark, so a mixed or cut version shows."""
    for name in FILES:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(f"{tag}:{name}:".encode() + b"x" * size + b":end")
    return str(folder)


def _complete_copy_of(version_dir):
    """The model a version folder is a whole copy of (its tag), or an assertion error naming what is wrong."""
    tags = set()
    for name in FILES:
        with open(os.path.join(version_dir, name), "rb") as f:
            content = f.read()
        assert content.endswith(b":end"), f"{version_dir}: {name} is cut short"
        tags.add(content.split(b":")[0].decode())
    assert len(tags) == 1, f"{version_dir} mixes models {tags}"
    assert os.path.exists(os.path.join(version_dir, SOURCE_MARKER)), f"{version_dir} has no source marker"
    return tags.pop()


def _leftovers(serving):
    return sorted(name for name in os.listdir(serving) if name.startswith(STAGING_PREFIX))


def test_publishes_a_complete_version_and_keeps_earlier_ones(tmp_path):
    serving = tmp_path / "serving"
    first = publish_atomically(_model(tmp_path / "a", "a"), str(serving), version=100)
    second = publish_atomically(_model(tmp_path / "b", "b"), str(serving), version=100)  # same second: next number
    assert model_versions(str(serving)) == ["100", "101"] and os.path.basename(second) == "101"
    assert [_complete_copy_of(first), _complete_copy_of(second)] == ["a", "b"]
    assert sorted(os.listdir(serving)) == [LOCK_FILE, "100", "101"], "no staging folder left behind"
    # A requested number below the newest is raised above it: the newest version is always the newest push.
    assert os.path.basename(publish_atomically(_model(tmp_path / "c", "c"), str(serving), version=50)) == "102"


def test_a_copy_that_fails_midway_leaves_no_version_and_says_why(tmp_path, monkeypatch):
    serving = tmp_path / "serving"
    publish_atomically(_model(tmp_path / "a", "a"), str(serving), version=100)

    def copy_then_fail(src, dst, *args, **kwargs):
        os.makedirs(dst)
        shutil.copy(os.path.join(src, "saved_model.pb"), dst)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_pusher.io_utils, "copy_dir", copy_then_fail)
    with pytest.raises(PushError, match=rf"{serving}: publishing .* failed, nothing was published: .*No space left"):
        publish_atomically(_model(tmp_path / "b", "b"), str(serving), version=200)
    assert sorted(os.listdir(serving)) == [LOCK_FILE, "100"]
    assert _complete_copy_of(serving / "100") == "a"


def test_a_model_already_published_is_not_published_again(tmp_path):
    model, serving = _model(tmp_path / "a"), str(tmp_path / "serving")
    first = publish_atomically(model, serving, version=100)
    assert publish_atomically(model, serving, version=200) == first
    assert model_versions(serving) == ["100"]


def test_a_copy_of_a_published_version_is_that_version(tmp_path):
    """The Trainer reuses the serving model when no new data came: pushing that copy adds no version."""
    serving = str(tmp_path / "serving")
    first = publish_atomically(_model(tmp_path / "a"), serving, version=100)
    reused = tmp_path / "reused"
    shutil.copytree(first, reused)
    assert publish_atomically(str(reused), serving, version=200, judged_against="100") == first
    assert model_versions(serving) == ["100"] and latest_published(serving) == first


def test_a_rerun_never_republishes_a_superseded_model(tmp_path):
    serving = str(tmp_path / "serving")
    old = _model(tmp_path / "old", "old")
    publish_atomically(old, serving, version=100)
    publish_atomically(_model(tmp_path / "better", "better"), serving, version=200)
    # Even judged against the serving version (a rerun of the old configuration that the gate blessed again).
    with pytest.raises(SupersededModel, match=r"was published as version 100 and version 200 has replaced it; it "
                                              r"is not published again, so a rerun never rolls production back"):
        publish_atomically(old, serving, version=300, judged_against="200")
    assert model_versions(serving) == ["100", "200"]
    assert _complete_copy_of(latest_published(serving)) == "better"


def test_a_push_whose_baseline_is_no_longer_the_newest_is_refused(tmp_path):
    serving = str(tmp_path / "serving")
    candidate = _model(tmp_path / "candidate", "candidate")
    publish_atomically(_model(tmp_path / "other", "other"), serving, version=100)  # after an empty dir was judged
    with pytest.raises(StaleBaseline, match=r"version 100 was published since the Evaluator chose its baseline \(the "
                                            r"newest version was then none\); nothing pushed: the next run judges "
                                            r"the model against version 100"):
        publish_atomically(candidate, serving, judged_against="")
    publish_atomically(_model(tmp_path / "third", "third"), serving, version=200)
    with pytest.raises(StaleBaseline, match="version 200 was published since .* was then 100"):
        publish_atomically(candidate, serving, judged_against="100")
    assert model_versions(serving) == ["100", "200"] and _leftovers(serving) == []
    assert _complete_copy_of(publish_atomically(candidate, serving, judged_against="200")) == "candidate"


def test_interrupted_staging_folders_are_removed_by_the_next_push(tmp_path):
    serving = tmp_path / "serving"
    publish_atomically(_model(tmp_path / "a", "a"), str(serving), version=100)
    _model(serving / f"{STAGING_PREFIX}5f0c2a", "dead")  # a push killed mid-copy
    (serving / f"{STAGING_PREFIX}101-42").mkdir()  # one named by the pid, as before this protocol
    publish_atomically(_model(tmp_path / "b", "b"), str(serving), version=100)
    assert sorted(os.listdir(serving)) == [LOCK_FILE, "100", "101"]


def test_a_push_waits_for_the_lock_and_gives_up_with_a_message(tmp_path, monkeypatch):
    """While another push holds the lock (here: this test), its staging folder is left alone."""
    serving = tmp_path / "serving"
    clean_interrupted_pushes(str(serving))  # creates the serving dir and its lock file
    (serving / f"{STAGING_PREFIX}live").mkdir()
    monkeypatch.setattr(atomic_pusher, "LOCK_TIMEOUT_SECONDS", 0.3)
    with open(serving / LOCK_FILE, "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(PushError, match=rf"{LOCK_FILE}: another push has held the serving dir's lock for more "
                                            r"than 0 s; nothing was published"):
            publish_atomically(_model(tmp_path / "a"), str(serving))
        assert time.monotonic() - started >= 0.3
        assert _leftovers(serving) == [f"{STAGING_PREFIX}live"] and model_versions(str(serving)) == []
    assert clean_interrupted_pushes(str(serving)) == [f"{STAGING_PREFIX}live"]


def test_files_and_folders_are_fsynced_before_the_rename_and_the_serving_dir_after(tmp_path, monkeypatch):
    events, real_fsync, real_rename = [], os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", str(src), str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    serving = str(tmp_path / "serving")
    final = publish_atomically(_model(tmp_path / "a"), serving, version=100)
    ((at, (_, staging, target)),) = [(i, e) for i, e in enumerate(events) if e[0] == "rename"]
    assert target == final
    synced_before = {path for kind, path, *_ in events[:at] if kind == "fsync"}
    written = {os.path.join(folder, name).replace(final, staging) for folder, dirs, files in os.walk(final)
               for name in dirs + files} | {staging}
    assert written <= synced_before, sorted(written - synced_before)
    assert ("fsync", serving) in events[at + 1:]


# Real processes. Spawned (a fork of this process would copy TensorFlow's threads), each imports TFX afresh
# (~10 s): the two racers stay up for the module and are then killed by the kill tests.

def _worker(barrier, inbox, results):
    """Runs the jobs put in its inbox (a function of this module and its arguments) until it gets None."""
    import components.atomic_pusher  # noqa: F401 - imported before the first job, so jobs start at once

    for job in iter(inbox.get, None):
        name, args = job
        globals()[name](barrier, results, *args)


def _race(barrier, results, jobs):
    """Per job, wait for the other racer, then push; report the outcome, an exception's type and message included."""
    for model, serving, judged in jobs:
        barrier.wait(timeout=120)
        started = time.time()
        try:
            outcome = publish_atomically(model, serving, judged_against=judged)
        except Exception as err:  # noqa: BLE001 - the test asserts which kinds come back
            outcome = f"{type(err).__name__}: {err}"
        results.put((serving, started, time.time(), outcome))


def _push_and_die(barrier, results, model, serving, kill_at, ready_file):
    """Push, and die by SIGKILL at `kill_at`: "copy" blocks mid-copy until killed from outside, "rename" kills
    itself just before the rename."""
    def copy_half(src, dst, *args, **kwargs):
        os.makedirs(os.path.join(dst, "variables"))
        shutil.copy(os.path.join(src, FILES[0]), dst)
        open(ready_file, "w").close()
        time.sleep(300)

    def die_instead(src, dst):
        os.kill(os.getpid(), signal.SIGKILL)

    if kill_at == "copy":
        atomic_pusher.io_utils.copy_dir = copy_half
    else:
        os.rename = die_instead
    publish_atomically(model, serving)


class Workers:
    def __init__(self):
        self.context = multiprocessing.get_context("spawn")
        self.results = self.context.Queue()
        self.barrier = self.context.Barrier(2)  # kept: the children unpickle it after start() returns
        self.pool = []  # (inbox, process)

    def ready(self, count):
        """`count` live workers, spawning what is missing (a killed one is gone)."""
        self.pool = [(inbox, process) for inbox, process in self.pool if process.is_alive()]
        while len(self.pool) < count:
            inbox = self.context.Queue()
            process = self.context.Process(target=_worker, args=(self.barrier, inbox, self.results))
            process.start()
            self.pool.append((inbox, process))
        return self.pool[:count]

    @staticmethod
    def run(worker, name, *args):
        inbox, process = worker
        inbox.put((name, args))
        return process

    def close(self):
        for inbox, process in self.pool:
            if process.is_alive():
                inbox.put(None)
            process.join(timeout=60)
            if process.is_alive():
                process.kill()


@pytest.fixture(scope="module")
def workers():
    pool = Workers()
    yield pool
    pool.close()


def test_two_processes_pushing_at_once_publish_two_whole_distinct_versions_or_one_and_a_refusal(tmp_path, workers):
    """Unchecked pushes (no baseline) both publish; pushes both judged against the same (empty) serving dir publish
    one version, and the other is refused as stale. Every round, the two pushes overlapped in time."""
    models = {tag: _model(tmp_path / tag, tag, size=2_000_000) for tag in ("a", "b")}
    plain = [str(tmp_path / f"plain-{i}") for i in range(REPETITIONS)]
    checked = [str(tmp_path / f"checked-{i}") for i in range(REPETITIONS)]
    for worker, tag in zip(workers.ready(2), models):
        workers.run(worker, "_race", [(models[tag], s, None) for s in plain] + [(models[tag], s, "") for s in checked])
    by_serving = {}
    for _ in range(2 * (len(plain) + len(checked))):
        serving, started, ended, outcome = workers.results.get(timeout=120)
        by_serving.setdefault(serving, []).append((started, ended, outcome))
    skews = []
    for serving, pushes in by_serving.items():
        (start_a, end_a, first), (start_b, end_b, second) = pushes
        assert start_a < end_b and start_b < end_a, f"{serving}: the two pushes did not overlap"
        skews.append(abs(start_a - start_b))
        assert _leftovers(serving) == []
        versions = model_versions(serving)
        tags = sorted(_complete_copy_of(os.path.join(serving, v)) for v in versions)
        if serving in plain:
            assert tags == ["a", "b"] and len(set(versions)) == 2, (serving, first, second)
        else:
            assert len(tags) == 1, (serving, first, second)
            (refusal,) = [o for o in (first, second) if not o.startswith(serving)]
            assert refusal.startswith(f"StaleBaseline: {serving}: version {versions[0]} was published since"), refusal
    print(f"\n{len(skews)} races: start skew median {sorted(skews)[len(skews) // 2] * 1000:.1f} ms, "
          f"max {max(skews) * 1000:.1f} ms")


def _wait_for(condition, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_push_killed_mid_copy_leaves_no_version_and_the_waiting_push_takes_over(tmp_path, workers):
    serving = str(tmp_path / "serving")
    publish_atomically(_model(tmp_path / "first", "first"), serving, version=100)
    ready = str(tmp_path / "ready")
    (worker,) = workers.ready(1)
    dying = workers.run(worker, "_push_and_die", _model(tmp_path / "killed", "killed"), serving, "copy", ready)
    _wait_for(lambda: os.path.exists(ready))
    assert len(_leftovers(serving)) == 1  # its half-copied staging folder
    waiting = {}
    second = threading.Thread(target=lambda: waiting.update(
        path=publish_atomically(_model(tmp_path / "second", "second"), serving)))
    second.start()
    time.sleep(1.0)
    assert second.is_alive() and model_versions(serving) == ["100"], "the second push must wait for the lock"
    killed_at = time.monotonic()
    os.kill(dying.pid, signal.SIGKILL)
    second.join(timeout=60)
    print(f"\nthe waiting push finished {time.monotonic() - killed_at:.2f} s after the holder was killed")
    dying.join(timeout=60)
    assert dying.exitcode == -signal.SIGKILL
    assert [_complete_copy_of(os.path.join(serving, v)) for v in model_versions(serving)] == ["first", "second"]
    assert waiting["path"] == latest_published(serving) and _leftovers(serving) == []


def test_a_push_killed_before_the_rename_leaves_no_version_and_the_next_cleans_up(tmp_path, workers, monkeypatch):
    serving = str(tmp_path / "serving")
    publish_atomically(_model(tmp_path / "first", "first"), serving, version=100)
    (worker,) = workers.ready(1)
    dying = workers.run(worker, "_push_and_die", _model(tmp_path / "killed", "killed"), serving, "rename", "")
    dying.join(timeout=300)
    assert dying.exitcode == -signal.SIGKILL
    (left,) = _leftovers(serving)
    assert _complete_copy_of(os.path.join(serving, left)) == "killed"  # whole, but never renamed: not a version
    assert model_versions(serving) == ["100"]
    monkeypatch.setattr(atomic_pusher, "LOCK_TIMEOUT_SECONDS", 1.0)  # the kernel released the dead push's lock
    publish_atomically(_model(tmp_path / "next", "next"), serving)
    assert [_complete_copy_of(os.path.join(serving, v)) for v in model_versions(serving)] == ["first", "next"]
    assert _leftovers(serving) == []


# The Pusher component: the Evaluator's baseline, read from the blessing

def _choose_baseline(tmp_path, candidate, serving, name):
    baseline = standard_artifacts.Model()
    baseline.uri = str(tmp_path / name)
    PublishedBaseline.EXECUTOR_SPEC.executor_class().Do(
        {"model": [candidate]}, {"baseline": [baseline]},
        {"serving_dir": serving, "config_json": Config().restricted("streams", "ingest", "gate").to_json()})
    return baseline


def _push(tmp_path, candidate, serving, baseline, blessed=1):
    blessing, pushed = standard_artifacts.ModelBlessing(), standard_artifacts.PushedModel()
    blessing.uri, pushed.uri = str(tmp_path / "blessing"), str(tmp_path / "pushed")
    blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY, blessed)
    blessing.set_string_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline.uri)
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving))
    AtomicPusherExecutor().Do({"model": [candidate], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
                              {"push_destination": proto_utils.proto_to_json(destination)})
    return pushed


def _trained(tmp_path, tag):
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "Trainer" / tag)
    _model(os.path.join(model.uri, "Format-Serving"), tag)
    return model


def test_the_pusher_publishes_only_over_the_version_its_baseline_saw(tmp_path):
    serving = str(tmp_path / "serving")
    publish_atomically(_model(tmp_path / "old", "old"), serving, version=100)
    candidate = _trained(tmp_path, "candidate")
    stale = _choose_baseline(tmp_path, candidate, serving, "baseline-1")  # the newest is 100
    publish_atomically(_model(tmp_path / "other", "other"), serving, version=101)  # another run, meanwhile
    with pytest.raises(StaleBaseline, match="version 101 was published since .* was then 100"):
        _push(tmp_path, candidate, serving, stale)
    assert model_versions(serving) == ["100", "101"]
    fresh = _choose_baseline(tmp_path, candidate, serving, "baseline-2")  # the next run
    pushed = _push(tmp_path, candidate, serving, fresh)
    assert pushed.get_int_custom_property("pushed") == 1
    assert _complete_copy_of(pushed.get_string_custom_property("pushed_destination")) == "candidate"


def test_the_pusher_marks_a_superseded_model_not_pushed_and_says_why(tmp_path):
    serving = str(tmp_path / "serving")
    old = _trained(tmp_path, "old")
    publish_atomically(os.path.join(old.uri, "Format-Serving"), serving, version=100)
    publish_atomically(_model(tmp_path / "better", "better"), serving, version=200)
    pushed = _push(tmp_path, old, serving, _choose_baseline(tmp_path, old, serving, "baseline"))
    assert pushed.get_int_custom_property("pushed") == 0
    assert "was published as version 100 and version 200 has replaced it" in pushed.get_string_custom_property(
        NOT_PUSHED_REASON_PROPERTY)
    assert model_versions(serving) == ["100", "200"]


def test_an_unblessed_model_is_not_pushed_and_interrupted_pushes_are_cleaned(tmp_path):
    serving = str(tmp_path / "serving")
    publish_atomically(_model(tmp_path / "old", "old"), serving, version=100)
    os.makedirs(os.path.join(serving, f"{STAGING_PREFIX}dead"))
    candidate = _trained(tmp_path, "candidate")
    pushed = _push(tmp_path, candidate, serving, _choose_baseline(tmp_path, candidate, serving, "b"), blessed=0)
    assert pushed.get_int_custom_property("pushed") == 0
    assert sorted(os.listdir(serving)) == [LOCK_FILE, "100"]


def test_the_baselines_cache_key_changes_with_versions_published_from_elsewhere_only(tmp_path):
    """After a push refused as stale, the next run must judge again; after its own push, a rerun stays cached."""
    from pipeline.dag import create_pipeline

    config = Config().replace({"run.pipeline_root": str(tmp_path / "root"), "run.data_root": str(tmp_path)})

    def key():
        (node,) = [c for c in create_pipeline(config).components if c.id == BASELINE]
        return node.exec_properties["published_elsewhere"]

    serving = config.serving_dir
    assert key() == newest_published_elsewhere(serving, config.run.pipeline_root) == ""
    publish_atomically(_model(tmp_path / "root" / "Trainer" / "model" / "7", "ours"), serving, version=100)
    assert published_source(os.path.join(serving, "100")).startswith(str(tmp_path / "root"))
    assert key() == ""
    publish_atomically(_model(tmp_path / "elsewhere" / "Trainer" / "model" / "3", "theirs"), serving, version=200)
    assert key() == "200"
    publish_atomically(_model(tmp_path / "root" / "Trainer" / "model" / "8", "ours again"), serving, version=300)
    assert key() == "200"
    shutil.copytree(os.path.join(serving, "300"), os.path.join(serving, "400"))
    os.remove(os.path.join(serving, "400", SOURCE_MARKER))  # pushed by hand
    assert key() == "400"
