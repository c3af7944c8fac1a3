"""The seven measurements of the bench. Each returns plain data (JSON-ready); bench/report.py renders it.

Sample data and pipeline runs are shared between sections through `Bench`: the 1x pipeline run is the
pipeline section, the first scaling point and the floor's first comparison, measured once.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.floor import scene_folders
from bench.ingest_memory import extract_commit, reference_ingest
from bench.ingest_memory import ingest_memory as measure_ingest_memory
from bench.measure import BenchError, ProcessMeasure, run_floor, run_pipelines, run_predict
from bench.report import weakest
from bench.settings import (INGEST_BEFORE_COMMIT, RETRAIN_SEED_OFFSET, TARGETS, UNSEEN, UNSEEN_SEED_OFFSET,
                            Settings)
from bench.worker import CLASS_DROP, EXAMPLES, FLOOR, MACRO_DROP, MAJORITY_EXCESS, record
from components.scene_example_gen import scene_examples
from components.scenes import load_scene
from foundation.config import SPLITS, TEST, TRAIN, Config, GateConfig
from foundation.published import latest_published
from models.fused_cnn import STREAMS_BY_MODE
from pipeline.component_ids import SCENE_EXAMPLE_GEN, TRAINER
from synth.scenes import generate_sample


def progress(section: str, message: str) -> None:
    print(f"[{section}] {message}", flush=True)


class Bench:
    """Settings, the work folder, and every sample, pipeline run and floor run measured so far."""

    def __init__(self, settings: Settings, work: Path):
        self.settings = settings
        self.work = work
        self._samples: set[Path] = set()
        self._pipelines: dict[tuple[int, str], dict[str, Any]] = {}
        self._fresh_models: dict[tuple[int, str], str | None] = {}  # the model each fresh run trained
        self._floors: dict[int, dict[str, Any]] = {}

    def base_config(self) -> Config:
        return Config().replace(self.settings.overrides)

    def sample(self, scenes: int, side: int, seed: int = 0) -> Path:
        """Synthetic scenes, written once per (scenes, side, seed)."""
        path = self.work / "data" / f"scenes{scenes}-side{side}-seed{seed}"
        if path not in self._samples:
            generate_sample(path, self.base_config(), scenes_per_span=scenes, size=side, seed=seed)
            self._samples.add(path)
        return path

    def scaled_config(self, multiple: int, mode: str = "in_memory") -> Config:
        """The default sample times `multiple` (more scenes of the same side), in a pipeline root of its own."""
        data = self.sample(self.settings.scenes * multiple, self.settings.scene_side)
        return self.base_config().replace({
            "run.data_root": str(data),
            "run.pipeline_root": str(self.work / "pipelines" / f"x{multiple}-{mode}"),
            "run.direct_running_mode": mode,
        })

    def pipeline(self, multiple: int, mode: str = "in_memory", rerun: bool = True) -> dict[str, Any]:
        """A fresh run in a new pipeline root and, with `rerun`, an immediate rerun (cached), each in a fresh
        process; a rerun does no Beam work, so runner modes are compared on fresh runs alone."""
        key = (multiple, mode)
        config = self.scaled_config(multiple, mode)
        runs = self._pipelines.setdefault(key, {"multiple": multiple, "mode": mode,
                                                "scenes": self.settings.scenes * multiple,
                                                "scene_side": self.settings.scene_side})
        for kind in ("fresh", "cached") if rerun else ("fresh",):
            if kind in runs:
                continue
            progress("pipeline", f"{kind} run, {multiple}x data, DirectRunner {mode} ...")
            measure, (result,) = run_pipelines([config], self.work, f"pipeline-x{multiple}-{mode}-{kind}",
                                               record=False)
            recorded = record(config)
            runs[kind] = run_summary(measure, {**result, **recorded})
            if kind == "fresh":
                self._fresh_models[key] = recorded["model_dir"]
            progress("pipeline", f"  {runs[kind]['process_seconds']:.1f} s process, "
                                 f"{runs[kind]['pipeline_seconds']:.1f} s pipeline, ok={runs[kind]['ok']}")
        return runs

    def fresh_model(self, multiple: int, mode: str = "in_memory") -> str:
        """The model folder the fresh run at `multiple` trained (the run happens first if it has not)."""
        self.pipeline(multiple, mode, rerun=False)
        if self._fresh_models[(multiple, mode)] is None:
            raise BenchError(f"the fresh {multiple}x run trained no model (see its log under {self.work / 'logs'})")
        return self._fresh_models[(multiple, mode)]

    def floor(self, multiple: int) -> dict[str, Any]:
        """The floor at `multiple`, trained for exactly the epochs the fresh pipeline run's Trainer ran there (the run
        happens first if it has not), so that the two compare orchestration and not amounts of training."""
        if multiple not in self._floors:
            trainer = self.pipeline(multiple, rerun=False)["fresh"]["trainer"]
            if trainer is None:
                raise BenchError(f"the fresh {multiple}x run trained no model, so the floor has no epochs to match "
                                 f"(see its log under {self.work / 'logs'})")
            progress("floor", f"floor script, {multiple}x data, {trainer['epochs_run']} epochs as the pipeline's ...")
            measure, result = run_floor(self.scaled_config(multiple), self.work, f"floor-x{multiple}",
                                        trainer["epochs_run"])
            self._floors[multiple] = {"multiple": multiple, "process_seconds": measure.seconds,
                                      "peak_rss_mib": measure.peak_rss_mib, **result}
            progress("floor", f"  {measure.seconds:.1f} s process, {result['seconds']['total']:.1f} s of work")
        return self._floors[multiple]


def run_summary(measure: ProcessMeasure, result: dict[str, Any]) -> dict[str, Any]:
    """One pipeline run (the worker's result with its record): times, memory, data size, training speed and
    the evaluation."""
    components = {c["node"]: {"state": c["state"], "seconds": c["seconds"]} for c in result["components"]}
    counts = result["label_counts"]
    patches = None
    if counts is not None:
        patches = {split: sum(counts[split].values()) for split in SPLITS}
        patches["total"] = sum(patches.values())
    trainer = None
    if result["training"] is not None and TRAINER in components:
        train_examples = sum(result["training"]["label_counts"][TRAIN].values())
        seconds = components[TRAINER]["seconds"]
        trainer = {"epochs_run": result["training"]["epochs_run"], "train_examples": train_examples,
                   "seconds": seconds, "inside": result["training"]["seconds"],
                   "examples_per_second": train_examples * result["training"]["epochs_run"] / seconds}
    return {
        "ok": result["ok"],
        "process_seconds": measure.seconds,
        "pipeline_seconds": result["pipeline_seconds"],
        "peak_rss_mib": max(measure.peak_rss_mib, result["maxrss_mib"]),
        "sampled_tree_peak_rss_mib": measure.peak_rss_mib,
        "maxrss_mib": result["maxrss_mib"],
        "children_maxrss_mib": result["children_maxrss_mib"],
        "components": components,
        "patches": patches,
        "trainer": trainer,
        "ingest_report": result["ingest_report"],
        "evaluated_split": TEST,
        "evaluation": result["evaluation"],
    }


def _timed(work: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of every thread of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def ingest(bench: Bench) -> dict[str, Any]:
    """Issue 2: `scene_examples` (read, align, sample, cut, serialize) single-process on the default sample and
    on 4x the pixels (scenes of twice the side), and the SceneExampleGen component in a pipeline run."""
    settings = bench.settings
    sets = []
    for name, side in (("default sample", settings.scene_side), ("4x pixels (scenes of twice the side)",
                                                                 2 * settings.scene_side)):
        config = bench.base_config().replace({"run.data_root": str(bench.sample(settings.scenes, side))})
        folders = [str(folder) for folder in scene_folders(config)]
        progress("ingest", f"scene_examples on {len(folders)} scenes of {side} px, "
                           f"{settings.ingest_repeats} timed pass(es)")
        scene_examples(folders[0], config)  # warm-up: first-call costs (GDAL and PROJ set-up) are not throughput
        full = [_timed(lambda: sum(len(scene_examples(f, config).serialized) for f in folders))
                for _ in range(settings.ingest_repeats)]
        load = [_timed(lambda: [load_scene(f, config) for f in folders]) for _ in range(settings.ingest_repeats)]
        patches = full[0][0]
        wall = statistics.median(t[1] for t in full)
        cpu = statistics.median(t[2] for t in full)
        sets.append({
            "name": name, "scenes": len(folders), "scene_side": side, "pixels": len(folders) * side * side,
            "patches": patches, "wall_seconds": wall, "cpu_seconds": cpu,
            "patches_per_second": patches / wall, "patches_per_core_second": patches / cpu,
            "cores_busy": cpu / wall, "load_scene_share": statistics.median(t[1] for t in load) / wall,
        })
        progress("ingest", f"  {patches} patches, {patches / wall:,.0f}/s wall, {patches / cpu:,.0f}/s per core")
    memory = ingest_memory(bench)
    fresh = bench.pipeline(1, rerun=False)["fresh"]
    component_seconds = fresh["components"][SCENE_EXAMPLE_GEN]["seconds"]
    return {
        "repeats": settings.ingest_repeats,
        "sets": sets,
        "memory": memory,
        "component": {"seconds": component_seconds, "patches": fresh["patches"]["total"],
                      "patches_per_second": fresh["patches"]["total"] / component_seconds},
    }


# Every labelled pixel, so that the code before tiles and now cut the same patches: the per-class cap was per scene
# and is per tile, which would give the large scene more patches, and more patches per core, for nothing.
INGEST_MEMORY_OVERRIDES = ["ingest.max_per_class=0"]


# A scene this many times the default's pixels too, beyond the target's: whether the peak stops growing.
INGEST_MEMORY_LARGEST_MULTIPLE = 64


def ingest_memory(bench: Bench) -> dict[str, Any]:
    """Issue 13: ingestion's peak memory and patches per core second (bench/ingest_memory.py) for one default
    scene, one scene of TARGETS.ingest_large_scene_multiple times its pixels (and points) and one of
    INGEST_MEMORY_LARGEST_MULTIPLE times, each in a fresh process; then the large scene's patches per core second,
    the code before tiles (INGEST_BEFORE_COMMIT, bench/ingest_reference.py) and the tiled code in turns, on the same
    machine at the same time, so that their ratio does not depend on the machine."""
    from pipeline.predict import scene_dirs_of_span

    settings = bench.settings
    multiple = TARGETS.ingest_large_scene_multiple
    scenes = {"default scene": scene_dirs_of_span(bench.sample(settings.scenes, settings.scene_side), 1)[0]}
    for times in (multiple, INGEST_MEMORY_LARGEST_MULTIPLE):
        side_factor = math.isqrt(times)
        if side_factor ** 2 != times:
            raise BenchError(f"ingest: the large scene's pixel multiple {times} is not a square")
        scenes[f"{times}x scene"] = scene_dirs_of_span(bench.sample(1, side_factor * settings.scene_side), 1)[0]
    runs = []
    for name, scene in scenes.items():
        progress("ingest", f"peak memory of ingest_scene on the {name} ({scene}), a process of its own")
        run = measure_ingest_memory(Path(scene), bench.work, f"ingest-memory-{len(runs)}", INGEST_MEMORY_OVERRIDES)
        runs.append({"name": name, **run, "patches_per_core_second": run["patches"] / run["cpu_seconds"]})
    default, large, _ = runs
    large_scene = Path(scenes[f"{multiple}x scene"])
    tree = extract_commit(INGEST_BEFORE_COMMIT, bench.work / "code" / INGEST_BEFORE_COMMIT)
    turns: dict[str, list[float]] = {"before": [], "tiled": []}
    for turn in range(settings.ingest_throughput_turns):
        progress("ingest", f"patches per core second on the {multiple}x scene, turn {turn + 1} of "
                           f"{settings.ingest_throughput_turns}: {INGEST_BEFORE_COMMIT}, then the tiled code")
        before = reference_ingest(tree, large_scene, bench.work, f"ingest-before-{turn}", INGEST_MEMORY_OVERRIDES)
        tiled = measure_ingest_memory(large_scene, bench.work, f"ingest-tiled-{turn}", INGEST_MEMORY_OVERRIDES)
        if before["patches"] != tiled["patches"]:
            raise BenchError(f"ingest: {INGEST_BEFORE_COMMIT} cut {before['patches']} patches of {large_scene}, "
                             f"the tiled code {tiled['patches']}: their speeds would not compare")
        turns["before"].append(before["patches"] / before["cpu_seconds"])
        turns["tiled"].append(tiled["patches"] / tiled["cpu_seconds"])
    return {"large_scene_multiple": multiple, "overrides": INGEST_MEMORY_OVERRIDES, "runs": runs,
            "ratio": large["peak_rss_mib"] / default["peak_rss_mib"],
            "ratio_above_imports": ((large["peak_rss_mib"] - large["peak_rss_mib_after_imports"])
                                    / (default["peak_rss_mib"] - default["peak_rss_mib_after_imports"])),
            "throughput": {"before_commit": INGEST_BEFORE_COMMIT, "patches": large["patches"],
                           "patches_per_core_second": turns,
                           "median_before": statistics.median(turns["before"]),
                           "median_tiled": statistics.median(turns["tiled"])}}


def pipeline(bench: Bench) -> dict[str, Any]:
    """Issue 3: fresh and cached runs on the default sample."""
    return bench.pipeline(1)


def _line(x: list[float], y: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line; exact through two points."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def scaling(bench: Bench) -> dict[str, Any]:
    """Issue 5: fresh and cached runs at each data size, marginal cost, and (unless --quick) multi_processing at
    one size."""
    runs = [bench.pipeline(m) for m in bench.settings.multiples]
    marginal = []
    for before, after in zip(runs, runs[1:]):
        added = after["fresh"]["patches"]["total"] - before["fresh"]["patches"]["total"]
        marginal.append({
            "from": before["multiple"], "to": after["multiple"],
            "process_seconds_per_1000_patches":
                1000 * (after["fresh"]["process_seconds"] - before["fresh"]["process_seconds"]) / added,
            "pipeline_seconds_per_1000_patches":
                1000 * (after["fresh"]["pipeline_seconds"] - before["fresh"]["pipeline_seconds"]) / added,
        })
    component_costs = {}
    if len(runs) > 1:
        patches = [run["fresh"]["patches"]["total"] for run in runs]
        for node in runs[0]["fresh"]["components"]:
            fixed, per_patch = _line(patches, [run["fresh"]["components"][node]["seconds"] for run in runs])
            component_costs[node] = {"fixed_seconds": fixed, "seconds_per_1000_patches": 1000 * per_patch}
    result = {"runs": runs, "marginal": marginal, "component_costs": component_costs}
    if bench.settings.compare_multi_processing:
        multiple = bench.settings.multi_processing_multiple
        result["multi_processing"] = {"multiple": multiple, "in_memory": bench.pipeline(multiple),
                                      "multi_processing": bench.pipeline(multiple, "multi_processing", rerun=False)}
    return result


def floor(bench: Bench) -> dict[str, Any]:
    """Issue 5: the plain script against the pipeline at every size, each trained for the same epochs."""
    rows = []
    for multiple in bench.settings.multiples:
        result, run = bench.floor(multiple), bench.pipeline(multiple, rerun=False)["fresh"]
        rows.append({
            "multiple": multiple, "floor": result, "pipeline_epochs": run["trainer"]["epochs_run"],
            "pipeline_seconds": run["pipeline_seconds"], "pipeline_process_seconds": run["process_seconds"],
            "work_ratio": run["pipeline_seconds"] / result["seconds"]["total"],
            "process_ratio": run["process_seconds"] / result["process_seconds"],
        })
    return {"rows": rows}


def ablation_cells(cell_set: str = "all") -> list[dict[str, str]]:
    """streams x normalization x class weights, the full configuration first, then normalization outermost so
    each seed's root runs Transform only twice (a cell that changes only the model reuses the cached Transform).
    "essential": the full and the failure cell; "streams": those and the single-stream models with the shipped
    normalization and class weights."""
    default = Config()
    cells = [{"streams": streams, "normalization": normalization, "class_weights": weights}
             for normalization in (default.transform.normalization, "none")
             for streams in STREAMS_BY_MODE
             for weights in (default.model.class_weights, "none")]
    cells.sort(key=lambda cell: cell != default_cell())  # stable: the rest keep their order
    if cell_set == "all":
        return cells
    chosen = [default_cell(), failure_cell()]
    if cell_set == "streams":
        chosen += [cell for cell in cells if is_single_stream(cell) and cell["normalization"] ==
                   default.transform.normalization and cell["class_weights"] == default.model.class_weights]
    return [cell for cell in cells if cell in chosen]


def default_cell() -> dict[str, str]:
    """What terrafuse ships: the default streams, normalization and class weights."""
    default = Config()
    return {"streams": default.model.streams, "normalization": default.transform.normalization,
            "class_weights": default.model.class_weights}


def failure_cell() -> dict[str, str]:
    """The seed project's failure: the default (fused) model on raw values without class weights."""
    return {"streams": Config().model.streams, "normalization": "none", "class_weights": "none"}


def is_single_stream(cell: dict[str, str]) -> bool:
    return cell["streams"] != Config().model.streams


def cell_name(cell: dict[str, str]) -> str:
    return f"{cell['streams']}-{cell['normalization']}-{cell['class_weights']}"


def _spread(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, float)
    return {"mean": float(array.mean()), "min": float(array.min()), "max": float(array.max()),
            "std": float(array.std())}


def ablations(bench: Bench) -> dict[str, Any]:
    """Issue 9: every cell judged as production judges it, per seed (synthetic data seed and model.seed).

    The full configuration runs first on a fresh serving dir and must be blessed and pushed. Every other cell,
    and the full configuration retrained with another model seed, then runs with the shipped gate against a
    serving dir of its own holding a copy of the full model's published version: each sees exactly the full
    model as the serving model, whatever the cells before it pushed. One pipeline root and one worker process per
    seed, so ingestion, statistics and Transform are cached between cells.
    """
    settings = bench.settings
    cells = ablation_cells(settings.ablation_cells)
    base = bench.base_config()
    per_seed = []
    for seed in range(settings.seeds):
        data = bench.sample(settings.scenes, settings.scene_side, seed)
        root = bench.work / "ablations" / f"seed-{seed}"

        def config(cell: dict[str, str], name: str, model_seed: int) -> Config:
            return base.replace({
                "model.streams": cell["streams"], "transform.normalization": cell["normalization"],
                "model.class_weights": cell["class_weights"], "model.seed": model_seed,
                "run.data_root": str(data), "run.pipeline_root": str(root),
                "run.serving_dir": str(root / "serving" / name)})

        full = config(default_cell(), cell_name(default_cell()), seed)
        judged = [(cell, cell_name(cell), seed) for cell in cells[1:]]
        judged.append((default_cell(), "retrained", seed + RETRAIN_SEED_OFFSET))
        shutil.rmtree(full.serving_dir, ignore_errors=True)
        progress("ablations", f"seed {seed}: the full configuration on a fresh serving dir, then {len(judged)} runs "
                              "judged against it ...")
        measure, (full_result, *results) = run_pipelines(
            [full] + [config(cell, name, model_seed) for cell, name, model_seed in judged], bench.work,
            f"ablations-seed{seed}", record=True, judge_against_first=True)
        published = latest_published(full.serving_dir)
        progress("ablations", f"  {measure.seconds:.1f} s; the full model "
                              f"{'was' if published else 'was NOT'} published, blessed: "
                              f"{bool(full_result['evaluation'] and full_result['evaluation']['blessed'])}")
        full_run = {**default_cell(), "model_seed": seed, **_cell_outcome(full_result, None, base)}
        runs = [full_run] + [{**cell, "model_seed": model_seed,
                              **_cell_outcome(result, full_result["evaluation"] if published else None, base)}
                             for (cell, _, model_seed), result in zip(judged, results)]
        per_seed.append({"seed": seed, "process_seconds": measure.seconds,
                         "full_published": published is not None, "runs": runs[:-1], "retrained": runs[-1]})
    return {
        "seeds": settings.seeds,
        "gate": dataclasses.asdict(base.gate),
        "class_recall_floors": dict(zip(base.class_names, base.class_recall_floors)),
        "retrain_seed_offset": RETRAIN_SEED_OFFSET,
        "cells": [_aggregate(cell, [seed["runs"][i] for seed in per_seed]) for i, cell in enumerate(cells)],
        "retrained": _aggregate(default_cell(), [seed["retrained"] for seed in per_seed]),
        "default_cell": default_cell(),
        "failure_cell": {**failure_cell(),
                         "per_seed": [{"seed": seed["seed"], **seed["runs"][cells.index(failure_cell())]}
                                      for seed in per_seed]},
        "per_seed": per_seed,
    }


def limits_exceeded(evaluation: dict[str, Any], full: dict[str, Any] | None, gate: GateConfig,
                    floors: dict[str, float]) -> list[str]:
    """The check kinds a cell's measured test numbers violate, computed here from the cell's and the full model's
    own evaluations (not from the gate's verdict): below a floor, too few examples, a class or the macro recall
    more than the limit below the full model (`full`: None when there was no baseline), majority excess."""
    recalls = evaluation["per_class_recall"]
    kinds = []
    if any(not recalls[name] >= floor for name, floor in floors.items()):  # NaN (no examples) is below too
        kinds.append(FLOOR)
    if any(n < gate.min_test_examples_per_class for n in evaluation["per_class_test_examples"].values()):
        kinds.append(EXAMPLES)
    if full is not None:
        if any(full["per_class_recall"][name] - recalls[name] > gate.max_class_recall_drop for name in recalls):
            kinds.append(CLASS_DROP)
        if full["macro_recall"] - evaluation["macro_recall"] > gate.max_macro_recall_drop:
            kinds.append(MACRO_DROP)
    if evaluation["majority_excess"] > gate.max_majority_excess:
        kinds.append(MAJORITY_EXCESS)
    return kinds


def _cell_outcome(result: dict[str, Any], full: dict[str, Any] | None, config: Config) -> dict[str, Any]:
    """One run of a cell: the gate's verdict and the failed checks by kind, per-class recall on the test split and
    its change against the baseline, which limits the numbers exceed, and whether the baseline was the full model
    (the change the gate saw equals the cell's recall minus the full model's, per class)."""
    evaluation = result["evaluation"]
    if evaluation is None:
        return {"error": "the run stopped before the Evaluator (see the ablation log)"}
    recalls, changes = evaluation["per_class_recall"], evaluation["per_class_recall_change"]
    baseline_is_full = False
    if full is not None and changes is not None:
        baseline_is_full = all(abs(recalls[n] - changes[n] - full["per_class_recall"][n]) < 1e-6 for n in recalls)
    return {
        "blessed": evaluation["blessed"],
        "pushed": result["pushed"],
        "failures": evaluation["failures"],
        "failed_kinds": sorted({check["kind"] for check in result["failed_checks"]}),
        "failed_checks": result["failed_checks"],
        "limits_exceeded": limits_exceeded(evaluation, full, config.gate,
                                           dict(zip(config.class_names, config.class_recall_floors))),
        "baseline": result["baseline"],
        "baseline_is_full_model": baseline_is_full,
        "per_class_recall": recalls,
        "per_class_recall_change": changes,
        "per_class_test_examples": evaluation["per_class_test_examples"],
        "macro_recall": evaluation["macro_recall"],
        "macro_recall_change": evaluation["macro_recall_change"],
        "majority_prediction_share": evaluation["majority_prediction_share"],
        "majority_excess": evaluation["majority_excess"],
        "weakest_class": weakest(recalls),
    }


def _aggregate(cell: dict[str, str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [run for run in runs if "error" not in run]
    if not measured:
        return {**cell, "error": runs[0]["error"]}
    names = list(measured[0]["per_class_recall"])
    refused_by = {}
    for run in measured:
        for kind in run["failed_kinds"]:
            refused_by[kind] = refused_by.get(kind, 0) + 1
    return {
        **cell,
        "seeds_measured": len(measured),
        "macro_recall": _spread([run["macro_recall"] for run in measured]),
        "per_class_recall": {name: _spread([run["per_class_recall"][name] for run in measured]) for name in names},
        "majority_prediction_share": _spread([run["majority_prediction_share"] for run in measured]),
        "blessed": sum(run["blessed"] for run in measured),
        "refused_by": refused_by,  # check kind -> seeds in which it failed
    }


def quality(bench: Bench) -> dict[str, Any]:
    """Issue 11: the CNN of each stream mode against pixel baselines trained on the same training examples, judged
    on the pipeline's test split and on scenes the pipeline never saw (another generator seed, every labelled pixel
    with a valid window), per seed (synthetic data seed and model.seed). The three CNNs share one pipeline root per
    seed, so ingestion, statistics and Transform run once; each is scored whether or not the gate blessed it."""
    from bench.pixel_baselines import BASELINES, centre_pixels, fit, pixel_features, predict, recalls
    from bench.scoring import model_recalls, split_examples, unseen_examples

    settings, base = bench.settings, bench.base_config()
    per_seed = []
    for seed in range(settings.seeds):
        data = bench.sample(settings.scenes, settings.scene_side, seed)
        unseen = bench.sample(settings.scenes, settings.scene_side, UNSEEN_SEED_OFFSET + seed)
        root = bench.work / "quality" / f"seed-{seed}"
        configs = [base.replace({"model.streams": mode, "model.seed": seed, "run.data_root": str(data),
                                 "run.pipeline_root": str(root), "run.serving_dir": str(root / "serving" / mode)})
                   for mode in STREAMS_BY_MODE]
        progress("quality", f"seed {seed}: the CNN of each stream mode ({', '.join(STREAMS_BY_MODE)}) ...")
        measure, results = run_pipelines(configs, bench.work, f"quality-seed{seed}", record=True)
        sets = {TEST: split_examples(root, TEST), UNSEEN: unseen_examples(unseen, base)}
        scores = {}
        for mode, result in zip(STREAMS_BY_MODE, results):
            if result["model_dir"] is None:
                raise BenchError(f"quality, seed {seed}: no {mode} model was trained (see the worker's log)")
            scores[f"cnn {mode}"] = {name: model_recalls(result["model_dir"], *examples, base)
                                     for name, examples in sets.items()}
        train_values, train_labels = centre_pixels(split_examples(root, TRAIN)[0], base)
        values = {name: centre_pixels(serialized, base) for name, (serialized, _) in sets.items()}
        for baseline in BASELINES:
            for mode, streams in STREAMS_BY_MODE.items():
                model = fit(baseline, pixel_features(train_values, base, streams), train_labels, seed)
                scores[f"{baseline} {mode}"] = {
                    name: recalls(labels, predict(model, pixel_features(features, base, streams)), base)
                    for name, (features, labels) in values.items()}
        unseen_counts = np.bincount(base.class_indices(sets[UNSEEN][1]), minlength=len(base.class_ids))
        progress("quality", f"  {measure.seconds:.1f} s; unseen macro recall: " + ", ".join(
            f"{name} {np.mean(score[UNSEEN]):.3f}" for name, score in scores.items()))
        per_seed.append({"seed": seed, "process_seconds": measure.seconds, "scores": scores,
                         "examples": {name: len(labels) for name, (_, labels) in sets.items()},
                         "unseen_class_counts": dict(zip(base.class_names, unseen_counts.tolist()))})
    models = list(per_seed[0]["scores"])
    return {
        "seeds": settings.seeds,
        "unseen_seed_offset": UNSEEN_SEED_OFFSET,
        "classes": list(base.class_names),
        "stream_modes": {mode: list(streams) for mode, streams in STREAMS_BY_MODE.items()},
        "baselines": list(BASELINES),
        "models": {name: {split: {"per_class_recall": {c: _spread([seed["scores"][name][split][i] for seed in per_seed])
                                                       for i, c in enumerate(base.class_names)},
                                  "macro_recall": _spread([float(np.mean(seed["scores"][name][split]))
                                                           for seed in per_seed]),
                                  "worst_class_recall": _spread([float(np.min(seed["scores"][name][split]))
                                                                 for seed in per_seed])}
                          for split in (TEST, UNSEEN)}
                   for name in models},
        "per_seed": per_seed,
    }


def predict(bench: Bench) -> dict[str, Any]:
    """Issue 12: `pipeline.predict` with the model of the fresh default-sample run (section 2's), each measurement in
    a fresh process (bench.measure.predict_child). Speed: the default sample's scenes after a warm-up scene. Memory:
    one default scene against one scene of TARGETS.predict_large_scene_multiple times its pixels, at the default
    tile size, and the large scene at half and twice it too (what the tile size costs)."""
    from pipeline.predict import DEFAULT_TILE_SIZE, scene_dirs_of_span

    settings = bench.settings
    model_dir = bench.fresh_model(1)
    multiple = TARGETS.predict_large_scene_multiple
    side_factor = math.isqrt(multiple)
    if side_factor ** 2 != multiple:
        raise BenchError(f"predict: the large scene's pixel multiple {multiple} is not a square")
    scenes = scene_dirs_of_span(bench.sample(settings.scenes, settings.scene_side), 1)
    (large,) = scene_dirs_of_span(bench.sample(1, side_factor * settings.scene_side), 1)

    def measured(name: str, mapped: list[str], tile_size: int, warm_up: str | None = None) -> dict[str, Any]:
        progress("predict", f"{name}: {len(mapped)} scene(s), tile size {tile_size} ...")
        measure, result = run_predict(model_dir, mapped, bench.work, f"predict-{name.replace(' ', '-')}", tile_size,
                                      warm_up)
        run = _predict_run(name, measure, result)
        progress("predict", f"  {run['pixels_per_second']:,.0f} px/s ({run['map_pixels_per_second']:,.0f} mapping "
                            f"alone), peak {run['peak_rss_mib']:,.0f} MiB")
        return run

    speed = measured("default sample", scenes, DEFAULT_TILE_SIZE, warm_up=scenes[0])
    memory = [measured("default scene", scenes[:1], DEFAULT_TILE_SIZE)]
    memory += [measured(f"{multiple}x scene tile {tile_size}", [large], tile_size)
               for tile_size in (DEFAULT_TILE_SIZE // 2, DEFAULT_TILE_SIZE, 2 * DEFAULT_TILE_SIZE)]
    large_default = next(run for run in memory[1:] if run["tile_size"] == DEFAULT_TILE_SIZE)
    return {"model_dir": model_dir, "tile_size": DEFAULT_TILE_SIZE, "large_scene_multiple": multiple,
            "speed": speed, "memory": memory, "memory_ratio": large_default["peak_rss_mib"] / memory[0]["peak_rss_mib"]}


def _predict_run(name: str, measure: ProcessMeasure, result: dict[str, Any]) -> dict[str, Any]:
    """One predict process: its scenes' pixels, tiles and seconds by step summed, speeds and peak memory."""
    scenes = result["scenes"]
    pixels = sum(scene["pixels"] for scene in scenes)
    seconds = sum(scene["seconds"] for scene in scenes)
    steps = {step: sum(scene["step_seconds"][step] for scene in scenes) for step in scenes[0]["step_seconds"]}
    return {
        "name": name, "tile_size": result["tile_size"], "scenes": len(scenes),
        "scene_sides": sorted({int(math.isqrt(scene["pixels"])) for scene in scenes}),
        "pixels": pixels, "pixels_mapped": sum(scene["pixels_mapped"] for scene in scenes),
        "tiles": sum(scene["tiles"] for scene in scenes), "seconds": seconds, "step_seconds": steps,
        "pixels_per_second": pixels / seconds, "map_pixels_per_second": pixels / steps["map"],
        **({"warm_up_seconds": result["warm_up"]["seconds"]} if result["warm_up"] else {}),
        "model_load_seconds": result["model_load_seconds"], "process_seconds": measure.seconds,
        "peak_rss_mib_with_model": result["peak_rss_mib_with_model"], "peak_rss_mib": result["peak_rss_mib"],
        "sampled_peak_rss_mib": measure.peak_rss_mib,
        "macro_recall": [scene["macro_recall"] for scene in scenes],
    }


SECTION_FUNCTIONS = {"ingest": ingest, "pipeline": pipeline, "scaling": scaling, "floor": floor,
                     "ablations": ablations, "quality": quality, "predict": predict}
