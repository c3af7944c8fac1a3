"""Local runs: LocalDagRunner, the Beam runner of `run.beam_runner` (DirectRunner by default) and an SQLite ML
Metadata store under the pipeline root.

A run killed midway (SIGKILL, a lost machine) needs nothing done before the next: LocalDagRunner leaves the killed
execution RUNNING in ML Metadata with no output recorded, and the next run starts a new one (docs/design-notes.md,
"Killed runs"). Only a push killed before its rename leaves something behind, a staging folder, removed here.
"""
from __future__ import annotations

import logging
import os

from foundation.config import Config


def run_local(config: Config) -> bool:
    """Runs the DAG; prints what the run found. False when a component stopped the run."""
    # Not the public alias `tfx.v1`, which also imports google.cloud.aiplatform (3-5 s) for nothing used here.
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.metadata import sqlite_metadata_connection_config

    from components.atomic_pusher import clean_interrupted_pushes
    from pipeline.beam_runners import portable_workers
    from pipeline.dag import create_pipeline
    from pipeline.summary import last_run, record_stop, render, run_ids

    os.makedirs(config.run.pipeline_root, exist_ok=True)
    connection = sqlite_metadata_connection_config(os.path.abspath(config.metadata_path))
    earlier_runs = run_ids(config)
    ok = True
    try:
        pipeline = create_pipeline(config, connection)
        # The Pusher removes them too, but a run whose Pusher is cached or that stops at a gate never reaches it.
        if os.path.isdir(config.serving_dir):
            clean_interrupted_pushes(config.serving_dir)
        with portable_workers(config):
            LocalDagRunner().run(pipeline)
    except Exception as err:  # the summary below still reports what ran; the message says what stopped it
        logging.info("Traceback of the error that stopped the run:", exc_info=True)  # shown with terrafuse -v
        message = f"{type(err).__name__}: {err}"
        # TFX records a failed execution without its error: kept with it, the run's report can say why it stopped.
        if not record_stop(config, message, earlier_runs):
            print(f"\nRun stopped: {message}\n")
        ok = False
    print(render(config, last_run(config)))
    return ok
