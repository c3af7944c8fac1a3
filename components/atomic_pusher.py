"""A Pusher whose versions appear whole or not at all, one writer at a time, and only over the model they were
judged against.

TFX's filesystem Pusher copies straight into `<base>/<version>`: a crash mid-copy leaves a half-written version
that TF Serving may load, and two pushes in one second pick the same folder. `publish_atomically` instead does,
holding an exclusive lock on the serving dir (`<serving>/.push.lock`) from start to end:

1. remove every `.staging-*` folder: pushes create and consume theirs under the lock, so one found by the lock's
   holder belongs to a push that died (SIGKILL, a lost pod);
2. a model already published: the newest version -> nothing to do; an older one -> `SupersededModel`, it is not
   published again, so a rerun never rolls production back;
3. the newest version must still be the one that was newest when the Evaluator's baseline was chosen
   (`judged_against`, recorded by components/baseline.py), else `StaleBaseline` names the version published since;
4. copy the model into `.staging-<uuid4>` (unique across hosts and PID namespaces, unlike a pid), write its source
   marker, fsync every file and folder in it;
5. the version: seconds since the epoch, or one more than the newest if that is larger, so the newest serves;
6. rename the staging folder to the version and fsync the serving dir, which makes the new entry durable.

The lock is `fcntl.flock` on a file that is never deleted (deleting a lock file lets a waiter lock the old inode
while a newcomer locks a new one). The kernel drops it when its holder dies, SIGKILL included. It is advisory and
holds between processes on a local disk (what the tests exercise; containers on one host share the kernel, so
pods on one node with a hostPath or local volume too). On NFS the Linux client turns flock into a byte-range lock
the server arbitrates (flock(2)), so the lock file is opened read-write; a `nolock` or `local_lock=flock` mount
makes it local to one node (nfs(5)). Neither containers nor NFS were tested here (no NFS server on these machines).

Measured on these machines. tests/test_atomic_pusher.py: two spawned processes released by one barrier start
their pushes 0.6 to 4.4 ms apart (median of 20 races; six runs on 2 shared, loaded cores, the worst race 72 ms),
and every pair overlapped in time; a push waiting on the lock finished 0.06 to 0.35 s (six runs) after the
holder was SIGKILLed mid-copy, its own copy included. The same race in a scratch harness (30 races, models of
3 files of 2 MB): the code before this protocol (pid-named staging, version chosen check-then-act) raised a raw
OSError ("Directory not empty": its rename onto the other's new version) in 14 and published both models in 16;
this protocol published both, whole and distinct, in 30.

An object store (gs://) cannot hold the serving dir, and `create_pipeline` refuses one. tf.io.gfile offers no
lock and no atomic rename (a folder rename on GCS copies and deletes each object); the usual lock there is an
object created only if absent (the `if_generation_match=0` precondition of google-cloud-storage, installed, which
tf.io.gfile does not expose), but no lock would keep TF Serving, which lists the base path for version folders,
from seeing a version as soon as its first object exists. FUSE mounts of a bucket (Cloud Storage FUSE) are not
POSIX either: not supported. The model itself may come from gs:// (the copy goes through tf.io.gfile).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from typing import Any, Iterator

from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.pusher import executor as pusher_executor
# Not the public alias `tfx.v1.components`, which also imports google.cloud.aiplatform (3-5 s on every run).
from tfx.components.pusher.component import Pusher
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components.baseline import newest_version_at_choice
from foundation.published import model_source, model_versions, published_source, write_source_marker

STAGING_PREFIX = ".staging-"
LOCK_FILE = ".push.lock"
# A push holds the lock while it copies the model: 5 files of 2 MB took 24 ms (median of 15, fsync included, 9 ms
# without) on these machines' ext4 disk; the wait allows for large models copied from a bucket.
LOCK_TIMEOUT_SECONDS = 600.0
LOCK_POLL_SECONDS = 0.05
# On the pushed_model artifact when a blessed model is not pushed: why (SupersededModel's message).
NOT_PUSHED_REASON_PROPERTY = "not_pushed_reason"


class PushError(RuntimeError):
    """A push that published nothing; the message names the serving dir and the cause."""


class StaleBaseline(PushError):
    """A version was published after the Evaluator's baseline was chosen: the verdict is about another model."""


class SupersededModel(PushError):
    """The model was published before and a newer version has replaced it."""


@contextlib.contextmanager
def serving_dir_lock(base_dir: str) -> Iterator[None]:
    """Holds the serving dir's exclusive lock, waiting at most LOCK_TIMEOUT_SECONDS for it."""
    os.makedirs(base_dir, exist_ok=True)
    path = os.path.join(base_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # read-write: an exclusive lock over NFS needs it
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PushError(f"{path}: another push has held the serving dir's lock for more than "
                                    f"{LOCK_TIMEOUT_SECONDS:.0f} s; nothing was published") from None
                time.sleep(LOCK_POLL_SECONDS)
            except OSError as err:
                raise PushError(f"{path}: cannot lock the serving dir ({err}): its filesystem must support "
                                f"flock, see components/atomic_pusher.py") from err
        yield
    finally:
        os.close(fd)  # releases the lock


def clean_interrupted_pushes(base_dir: str) -> list[str]:
    """Removes the staging folders of pushes that died, under the lock; returns their names."""
    with serving_dir_lock(base_dir):
        return _remove_staging(base_dir)


def _remove_staging(base_dir: str) -> list[str]:
    interrupted = sorted(name for name in os.listdir(base_dir) if name.startswith(STAGING_PREFIX))
    for name in interrupted:
        logging.warning("Removing %s, left by an interrupted push", os.path.join(base_dir, name))
        shutil.rmtree(os.path.join(base_dir, name))
    return interrupted


def publish_atomically(model_dir: str, base_dir: str, version: int | None = None,
                       judged_against: str | None = None) -> str:
    """Publishes model_dir as a new version of base_dir (the protocol above) and returns the version's folder.

    `judged_against`: the version that was newest when the Evaluator's baseline was chosen, "" for none; None
    skips that check (a push outside the pipeline, e.g. by a test). `version`: the number to use if it is above
    every published one (tests); by default seconds since the epoch.
    Raises PushError (StaleBaseline, SupersededModel included) when nothing was published.
    """
    source = model_source(model_dir)
    try:
        with serving_dir_lock(base_dir):
            _remove_staging(base_dir)
            versions = model_versions(base_dir)
            sources = [published_source(os.path.join(base_dir, v)) for v in versions]
            newest = versions[-1] if versions else ""
            if newest and sources[-1] == source:
                logging.info("Model %s is already the newest version, %s", model_dir, newest)
                return os.path.join(base_dir, newest)
            if source in sources:
                raise SupersededModel(
                    f"{base_dir}: this model ({source}) was published as version {versions[sources.index(source)]} "
                    f"and version {newest} has replaced it; it is not published again, so a rerun never rolls "
                    f"production back")
            if judged_against is not None and newest != judged_against:
                raise StaleBaseline(
                    f"{base_dir}: version {newest} was published since the Evaluator chose its baseline (the newest "
                    f"version was then {judged_against or 'none'}); nothing pushed: the next run judges the model "
                    f"against version {newest}")
            staging = os.path.join(base_dir, f"{STAGING_PREFIX}{uuid.uuid4().hex}")
            try:
                io_utils.copy_dir(model_dir, staging)
                write_source_marker(staging, source)
                _fsync_tree(staging)
                number = max(int(time.time()) if version is None else version, int(newest or -1) + 1)
                final = os.path.join(base_dir, str(number))
                os.rename(staging, final)  # `number` is above every version: the target cannot exist
                _fsync(base_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return final
    except PushError:
        raise
    except OSError as err:
        raise PushError(f"{base_dir}: publishing {model_dir} failed, nothing was published: {err}") from err


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """Every file, then every folder bottom-up: the rename must not reach the disk before the contents."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync(os.path.join(folder, name))
        _fsync(folder)


class AtomicPusherExecutor(pusher_executor.Executor):
    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        base_dir = destination.filesystem.base_directory
        if not self.CheckBlessing(input_dict):
            logging.warning("Model not blessed: nothing pushed.")
            if os.path.isdir(base_dir):
                clean_interrupted_pushes(base_dir)
            self._MarkNotPushed(model_push)
            return
        blessing = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_BLESSING_KEY])
        # The Evaluator records the baseline it compared against on the blessing; PublishedBaseline wrote there
        # which version was newest when it chose it.
        baseline_uri = blessing.get_string_custom_property(
            evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY)
        if not baseline_uri:
            raise PushError(f"the blessing {blessing.uri} names no baseline model: the Evaluator must compare against "
                            f"PublishedBaseline's output, or a push could replace a model it never saw")
        try:
            serving_path = publish_atomically(self.GetModelPath(input_dict), base_dir,
                                              judged_against=newest_version_at_choice(baseline_uri))
        except SupersededModel as refused:
            logging.warning("%s", refused)
            self._MarkNotPushed(model_push)
            model_push.set_string_custom_property(NOT_PUSHED_REASON_PROPERTY, str(refused))
            return
        logging.info("Model pushed to %s", serving_path)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=os.path.basename(serving_path))


def AtomicPusher(model: types.BaseChannel, model_blessing: types.BaseChannel, serving_dir: str) -> Pusher:
    return Pusher(
        model=model,
        model_blessing=model_blessing,
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=os.path.abspath(serving_dir))
        ),
        custom_executor_spec=executor_spec.ExecutorClassSpec(AtomicPusherExecutor),
    )
