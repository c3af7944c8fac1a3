"""`python -m bench.user_code [--repeats N] [--json FILE]`: what kubeflow.module_source "image" saves against "wheel".

With "wheel" TFX packs each module file's folder into a wheel at compile time (`udf_utils.package_user_module_file`)
and every Transform and Trainer execution pip-installs it into a new temporary folder: the Transform executor once
for each function it looks up (`preprocessing_fn`, `stats_options_updater_fn`, through
`import_utils.import_func_from_module`) and once more around its Beam pipeline (`TempPipInstallContext`), the
Trainer once (`udf_utils.get_fn`). With "image" the same TFX calls import the installed project. This times those
calls of TFX's own executor code, both ways, each repetition with fresh wheels installed again, with the project's
modules already imported (what both ways share). Prints JSON; docs/kubeflow.md records the numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from foundation.environment import prepare_tensorflow

prepare_tensorflow()  # an entry point: the switch goes before TensorFlow loads

from tfx.components.transform import executor as transform_executor
from tfx.components.transform import labels
from tfx.components.util import udf_utils
from tfx.utils import io_utils

import models.trainer  # noqa: F401  (loaded once here: both ways use them, neither is timed for it)
import transforms.preprocessing  # noqa: F401
from foundation.config import Config
from pipeline.component_ids import TRAINER, TRANSFORM
from pipeline.dag import PREPROCESSING_FN, RUN_FN, TRAINER_MODULE, TRANSFORM_MODULE


def transform_lookups(module_path: str | None) -> None:
    """What Transform's Executor.Do does with its user code before and around the Beam pipeline."""
    executor = transform_executor.Executor()
    inputs = {labels.MODULE_FILE: None, labels.MODULE_PATH: module_path,
              labels.PREPROCESSING_FN: None if module_path else PREPROCESSING_FN,
              labels.STATS_OPTIONS_UPDATER_FN: None,
              labels.CUSTOM_CONFIG: json.dumps({"config": Config().to_dict()})}
    _, wheels = udf_utils.decode_user_module_key(module_path)
    dependencies = [io_utils.ensure_local(wheel) for wheel in wheels]
    executor._GetPreprocessingFn(inputs, {})
    executor._GetStatsOptionsUpdaterFn(inputs)
    with udf_utils.TempPipInstallContext(dependencies):
        pass  # the Beam pipeline runs here


def trainer_lookup(module_path: str | None) -> None:
    """What the Trainer's Executor.Do does with its user code before calling run_fn."""
    exec_properties = {"module_path": module_path} if module_path else {"run_fn": RUN_FN}
    udf_utils.get_fn(exec_properties, "run_fn")


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(repeats: int) -> dict[str, Any]:
    installs = []
    install = udf_utils.install_to_temp_directory

    def counted(*args: Any, **kwargs: Any) -> str:
        installs.append(args[0])
        return install(*args, **kwargs)

    udf_utils.install_to_temp_directory = counted
    rows: dict[str, list[float]] = {"wheel build (2 wheels, per compile)": [], "Transform, wheel": [],
                                    "Transform, image": [], "Trainer, wheel": [], "Trainer, image": []}
    install_counts = {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as root:
            started = time.perf_counter()
            transform_path = udf_utils.package_user_module_file(TRANSFORM, TRANSFORM_MODULE, root)[1]
            trainer_path = udf_utils.package_user_module_file(TRAINER, TRAINER_MODULE, root)[1]
            rows["wheel build (2 wheels, per compile)"].append(time.perf_counter() - started)
            for step, lookup, module_path in (("Transform", transform_lookups, transform_path),
                                              ("Trainer", trainer_lookup, trainer_path)):
                installs.clear()
                rows[f"{step}, wheel"].append(timed(lambda: lookup(module_path)))
                install_counts[f"{step}, wheel"] = len(installs)
                installs.clear()
                rows[f"{step}, image"].append(timed(lambda: lookup(None)))
                install_counts[f"{step}, image"] = len(installs)
    udf_utils.install_to_temp_directory = install
    return {"repeats": repeats,
            "seconds": {name: {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                               "max": round(max(values), 3)} for name, values in rows.items()},
            "pip installs per execution": install_counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the result here (pip and setuptools print to stdout)")
    args = parser.parse_args()
    result = json.dumps(measure(args.repeats), indent=2)
    print(result)
    if args.json:
        Path(args.json).write_text(result + "\n")


if __name__ == "__main__":
    main()
