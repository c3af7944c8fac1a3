"""Local runs: LocalDagRunner, the Beam runner of `run.beam_runner` (DirectRunner by default) and an SQLite ML
Metadata store under the pipeline root."""
from __future__ import annotations

import logging
import os

from foundation.config import Config


def run_local(config: Config) -> bool:
    """Runs the DAG; prints what the run found. False when a component stopped the run."""
    # Not the public alias `tfx.v1`, which also imports google.cloud.aiplatform (3-5 s) for nothing used here.
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.metadata import sqlite_metadata_connection_config

    from pipeline.beam_runners import portable_workers
    from pipeline.dag import create_pipeline
    from pipeline.summary import last_run, record_stop, render, run_ids

    os.makedirs(config.run.pipeline_root, exist_ok=True)
    connection = sqlite_metadata_connection_config(os.path.abspath(config.metadata_path))
    earlier_runs = run_ids(config)
    ok = True
    try:
        with portable_workers(config):
            LocalDagRunner().run(create_pipeline(config, connection))
    except Exception as err:  # the summary below still reports what ran; the message says what stopped it
        logging.info("Traceback of the error that stopped the run:", exc_info=True)  # shown with terrafuse -v
        message = f"{type(err).__name__}: {err}"
        # TFX records a failed execution without its error: kept with it, the run's report can say why it stopped.
        if not record_stop(config, message, earlier_runs):
            print(f"\nRun stopped: {message}\n")
        ok = False
    print(render(config, last_run(config)))
    return ok
