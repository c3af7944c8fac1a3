"""A Pusher whose versions appear whole or not at all.

TFX's filesystem Pusher copies straight into `<base>/<version>`: a crash mid-copy leaves a half-written version
that TF Serving may load. Here the model is copied into a hidden staging folder beside the versions and renamed
into place, which is atomic on a POSIX filesystem (local disk, NFS, a Kubernetes volume); earlier versions are
never touched. The push still happens only on blessing (TFX's own blessing check).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

from tfx import types
from tfx.components.pusher import executor as pusher_executor
# Not the public alias `tfx.v1.components`, which also imports google.cloud.aiplatform (3-5 s on every run).
from tfx.components.pusher.component import Pusher
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from foundation.published import model_source, serving_version_of, write_source_marker

STAGING_PREFIX = ".staging-"


def publish_atomically(model_dir: str, base_dir: str, version: int | None = None) -> str:
    """Copies model_dir to base_dir/<version>; the version folder exists only once the copy is complete.

    A model that is already the newest version (a rerun re-blessing a cached or reused model) keeps it: nothing
    is copied. One published earlier but since superseded is published again, so the blessed model serves.
    """
    already = serving_version_of(model_dir, base_dir)
    if already:
        logging.info("Model %s is already the newest version, %s", model_dir, already)
        return already
    os.makedirs(base_dir, exist_ok=True)
    version = int(time.time()) if version is None else version
    while os.path.exists(os.path.join(base_dir, str(version))):
        version += 1  # two pushes in one second must not collide
    final = os.path.join(base_dir, str(version))
    staging = os.path.join(base_dir, f"{STAGING_PREFIX}{version}-{os.getpid()}")
    try:
        io_utils.copy_dir(model_dir, staging)  # the model may be on gs://
        write_source_marker(staging, model_source(model_dir))
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


class AtomicPusherExecutor(pusher_executor.Executor):
    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            logging.warning("Model not blessed: nothing pushed.")
            self._MarkNotPushed(model_push)
            return
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        serving_path = publish_atomically(self.GetModelPath(input_dict), destination.filesystem.base_directory)
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
