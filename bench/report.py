"""results.md and the plots, from the data the sections measured (the same data goes to results.json)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from bench.settings import TARGETS  # noqa: E402

MIN_SEGMENT_SECONDS = 0.5  # components below this in every bar of the components plot are drawn together
PER_PATCH_TOLERANCE = 1.10  # "flat": the later marginal cost may be up to 10 % above the earlier one
SMALL_SECONDS = 0.1  # components below this in both runs share one line of "Where the time goes"
ISSUE_OF = {"ingest": 2, "pipeline": 3, "ablations": 5, "scaling": 5, "floor": 5}


def _s(seconds: float) -> str:
    return f"{seconds:.1f}"


def _n(count: float) -> str:
    return f"{count:,.0f}"


def _r(recall: float) -> str:
    """Recall with three decimals; a class without eval examples has none."""
    return "n/a" if math.isnan(recall) else f"{recall:.3f}"


def _spread(stats: dict[str, float]) -> str:
    return f"{_r(stats['mean'])} ({_r(stats['min'])}–{_r(stats['max'])})"


def _pass(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def weakest(recalls: dict[str, float]) -> str:
    """The class with the lowest recall; a class without eval examples (NaN) counts as the lowest."""
    return min(recalls, key=lambda name: -math.inf if math.isnan(recalls[name]) else recalls[name])


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issues that the sections run could measure, with pass/fail (reported, never asserted)."""
    rows = []
    for data in results.get("ingest", {}).get("sets", []):
        rate = data["patches_per_core_second"]
        rows.append({"issue": 2, "target": f"ingestion ({data['name']}) > {_n(TARGETS.ingest_patches_per_core_second)} "
                                           f"patches/s per core",
                     "measured": f"{_n(rate)} patches/s per core",
                     "passed": rate > TARGETS.ingest_patches_per_core_second})
    run = results.get("pipeline")
    if run and "error" not in run:
        fresh, cached = run["fresh"], run["cached"]
        patches = fresh["patches"]["total"] if fresh["patches"] else 0
        rows.append({"issue": 3, "target": f"fresh run < {_s(TARGETS.fresh_seconds)} s (process wall) with >= "
                                           f"{_n(TARGETS.fresh_min_patches)} patches",
                     "measured": f"{_s(fresh['process_seconds'])} s, {_n(patches)} patches",
                     "passed": fresh["process_seconds"] < TARGETS.fresh_seconds
                     and patches >= TARGETS.fresh_min_patches})
        rows.append({"issue": 3, "target": f"cached rerun < {_s(TARGETS.cached_seconds)} s (process wall)",
                     "measured": f"{_s(cached['process_seconds'])} s",
                     "passed": cached["process_seconds"] < TARGETS.cached_seconds})
        recalls = fresh["evaluation"]["per_class_recall"] if fresh["evaluation"] else {}
        lowest = weakest(recalls) if recalls else None
        rows.append({"issue": 3, "target": f"every class's eval argmax recall >= {TARGETS.class_recall}",
                     "measured": f"lowest: {lowest} {_r(recalls[lowest])}" if lowest else "no evaluation",
                     "passed": bool(recalls) and all(r >= TARGETS.class_recall for r in recalls.values())})
    return rows + _issue5_targets(results)


def _issue5_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    ablations = results.get("ablations")
    if ablations and "error" not in ablations:
        cells = [c for c in ablations["cells"] if "error" not in c]
        default = next((c for c in cells if (c["streams"], c["normalization"], c["class_weights"])
                        == tuple(ablations["default_cell"].values())), None)
        best = max(cells, key=lambda c: c["macro_recall"]["mean"]) if cells else None
        if default:
            rows.append({"issue": 5, "target": "fused + per-stream normalization + class weights: best mean macro "
                                               f"recall of the {len(cells)} cells, blessed in every seed",
                         "measured": f"{_r(default['macro_recall']['mean'])}, blessed {default['blessed']}/"
                                     f"{ablations['seeds']}; best cell {_cell_name(best)} "
                                     f"{_r(best['macro_recall']['mean'])}",
                         "passed": best is default and default["blessed"] == ablations["seeds"]})
        failure = ablations["failure_cell"]["per_seed"]
        refused = sum(not run.get("blessed", False) for run in failure)
        rows.append({"issue": 5, "target": "the seed project's failure cell (fused, no normalization, no class "
                                           "weights) is refused in every seed",
                     "measured": f"refused in {refused}/{len(failure)} seeds",
                     "passed": refused == len(failure) and bool(failure)})
    scaling = results.get("scaling")
    if scaling and "error" not in scaling and len(scaling["marginal"]) >= 2:
        first, last = scaling["marginal"][0], scaling["marginal"][-1]
        first_cost = first["pipeline_seconds_per_1000_patches"]
        last_cost = last["pipeline_seconds_per_1000_patches"]
        rows.append({"issue": 5, "target": f"per-patch cost flat or falling: marginal pipeline s per 1,000 patches "
                                           f"{last['from']}x->{last['to']}x <= {PER_PATCH_TOLERANCE:.2f} x "
                                           f"{first['from']}x->{first['to']}x",
                     "measured": f"{first_cost:.2f} then {last_cost:.2f} s per 1,000 patches",
                     "passed": last_cost <= PER_PATCH_TOLERANCE * first_cost})
    floor = results.get("floor")
    if floor and "error" not in floor and floor["rows"]:
        largest = max(floor["rows"], key=lambda row: row["multiple"])
        rows.append({"issue": 5, "target": f"pipeline / floor < {TARGETS.floor_ratio}x at {largest['multiple']}x "
                                           f"(work: run_local against the floor's stages)",
                     "measured": f"{largest['work_ratio']:.2f}x work, {largest['process_ratio']:.2f}x process",
                     "passed": largest["work_ratio"] < TARGETS.floor_ratio})
    return rows


def _cell_name(cell: dict[str, Any]) -> str:
    return f"{cell['streams']}/{cell['normalization']}/{cell['class_weights']}"


def _machine_lines(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    done = [name for name in results["sections_run"] if name in results]
    pending = [name for name in results["sections_run"] if name not in results]
    packages = ", ".join(f"{name} {version}" for name, version in m["packages"].items())
    return [
        f"- Command (from the repository root): `{results['command']}`",
        f"- Machine: {m['cpu_model']}; {m['logical_cores']} logical cores ({m['physical_cores']} physical); "
        f"{m['memory_gib']} GiB; {m['os']}",
        f"- Python {m['python']}; {packages}",
        f"- Date (UTC): {m['date']}; bench wall time {_s(results['bench_seconds'])} s",
        f"- Load average (1, 5, 15 min) at start {m['load_average_at_start']}, at end "
        f"{results['load_average_at_end']}: times are only comparable on a quiet machine",
        f"- Code: git commit {m['git_commit']}, {m['git_modified_tracked_files']} tracked files modified",
        f"- Sections measured: {', '.join(done) or 'none yet'}"
        + (f"; still to run: {', '.join(pending)}" if pending else ""),
    ]


def render(results: dict[str, Any]) -> str:
    lines = ["# terrafuse benchmark", ""]
    if results["quick"]:
        lines += ["> **Quick run (`--quick`)**: tiny data and one epoch, a check that the harness fills every table. "
                  "These numbers are not benchmark results.", ""]
    lines += _machine_lines(results) + [""]
    rows = results["targets"]
    if rows:
        lines += ["## Targets", "", "| issue | target | measured | result |", "|---|---|---|---|"]
        lines += [f"| {r['issue']} | {r['target']} | {r['measured']} | {_pass(r['passed'])} |" for r in rows]
        lines.append("")
    renderers = {"ingest": _ingest, "pipeline": _pipeline, "ablations": _ablations, "scaling": _scaling,
                 "floor": _floor}
    for number, name in enumerate(("ingest", "pipeline", "ablations", "scaling", "floor"), start=1):
        if name not in results:
            continue
        data = results[name]
        lines += [f"## {number}. {_TITLES[name]} (issue {ISSUE_OF[name]})", ""]
        lines += [f"**Not measured**: {data['error']}", ""] if "error" in data else renderers[name](data, results)
    lines += _where_time_goes(results)
    return "\n".join(lines) + "\n"


_TITLES = {"ingest": "Ingestion throughput", "pipeline": "Pipeline on the default sample", "ablations": "Ablations",
           "scaling": "Scaling", "floor": "Floor: the same work without TFX"}


def _ingest(data: dict[str, Any], results: dict[str, Any]) -> list[str]:
    lines = [
        "`components.scene_example_gen.scene_examples` (read and align every stream, sample labelled pixels, cut "
        "patches, serialize tf.Examples) over every scene, single process, after one warm-up scene; the median of "
        f"{data['repeats']} timed pass(es). *Per core* divides by the process's CPU seconds (all its threads: the LAZ "
        "decoder may use more than one core), *wall* by elapsed seconds. *load_scene share*: the part of the wall "
        "time spent in `load_scene` alone (reading and aligning, before sampling and encoding).",
        "",
        "| data | scenes | side (px) | pixels | patches | wall s | CPU s | patches/s wall | patches/s per core "
        "| cores busy | load_scene share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in data["sets"]:
        lines.append(f"| {s['name']} | {s['scenes']} | {s['scene_side']} | {_n(s['pixels'])} | {_n(s['patches'])} "
                     f"| {s['wall_seconds']:.2f} | {s['cpu_seconds']:.2f} | {_n(s['patches_per_second'])} "
                     f"| {_n(s['patches_per_core_second'])} | {s['cores_busy']:.2f} "
                     f"| {100 * s['load_scene_share']:.0f} % |")
    c = data["component"]
    lines += ["", f"SceneExampleGen component in the fresh pipeline run (section 2): {_s(c['seconds'])} s for "
                  f"{_n(c['patches'])} patches, {_n(c['patches_per_second'])} patches/s (Beam set-up, block "
                  "assignment and gzipped TFRecord writing included).", ""]
    return lines


def _component_rows(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Component | state, seconds per run (columns in the order of `runs`)."""
    nodes = list(next(iter(runs.values()))["components"])
    lines = ["| component | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for node in nodes:
        cells = []
        for run in runs.values():
            c = run["components"].get(node)
            cells.append(f"{_s(c['seconds'])} ({c['state'].lower()})" if c else "not run")
        lines.append(f"| {node} | " + " | ".join(cells) + " |")
    return lines


def _run_rows(runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| measure | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for label, key, fmt in (("process wall s (start to exit)", "process_seconds", _s),
                            ("pipeline s (run_local)", "pipeline_seconds", _s),
                            ("peak memory MiB (process tree)", "peak_rss_mib", _n)):
        lines.append(f"| {label} | " + " | ".join(fmt(run[key]) for run in runs.values()) + " |")
    lines.append("| run completed | " + " | ".join("yes" if run["ok"] else "no" for run in runs.values()) + " |")
    return lines


def _pipeline(data: dict[str, Any], results: dict[str, Any]) -> list[str]:
    fresh, cached = data["fresh"], data["cached"]
    lines = [
        f"`run_local` on the default sample ({data['scenes']} scenes of {data['scene_side']} px, synthetic seed 0) "
        "in a new pipeline root, each run in a fresh process (`python -m bench.worker`): *fresh* is the first run, "
        "*cached* the immediate rerun. Process wall includes Python start-up and the TFX imports; *pipeline* is "
        "`run_local` alone. Peak memory: the larger of the sampled RSS sum over the process tree "
        "and the process's own maxrss. Component seconds come from ML Metadata (`pipeline.summary.last_run`).",
        "",
    ]
    lines += _run_rows({"fresh": fresh, "cached": cached}) + [""]
    lines += _component_rows({"fresh": fresh, "cached": cached}) + [""]
    if fresh["patches"]:
        p = fresh["patches"]
        lines.append(f"Patches: {_n(p['total'])} ({_n(p['train'])} train, {_n(p['eval'])} eval).")
    if fresh["trainer"]:
        t = fresh["trainer"]
        lines.append(f"Trainer: {_n(t['train_examples'])} training examples x {t['epochs_run']} epoch(s) run "
                     f"(training record) in {_s(t['seconds'])} s of Trainer = {_n(t['examples_per_second'])} "
                     "examples/s (the component's whole time: set-up, tracing, per-epoch eval and export included).")
    evaluation = fresh["evaluation"]
    if evaluation:
        lines += ["", "| class | eval argmax recall | >= target |", "|---|---|---|"]
        for name, recall in evaluation["per_class_recall"].items():
            lines.append(f"| {name} | {_r(recall)} | {'yes' if recall >= TARGETS.class_recall else 'no'} |")
        lines += ["", f"Macro recall {_r(evaluation['macro_recall'])}; the most predicted class takes "
                      f"{100 * evaluation['majority_prediction_share']:.1f} % of predictions; gate verdict: "
                      f"{'blessed' if evaluation['blessed'] else 'not blessed: ' + '; '.join(evaluation['failures'])}."]
    return lines + [""]


def _ablations(data: dict[str, Any], results: dict[str, Any]) -> list[str]:
    gate = data["gate"]
    names = []
    for cell in data["cells"]:
        if "per_class_recall" in cell:
            names = list(cell["per_class_recall"])
            break
    lines = [
        f"Every cell is a real pipeline run (`run_local`), for {data['seeds']} seed(s): seed *s* writes the "
        "synthetic scenes with seed *s* and trains with `model.seed` *s*. The cells of one seed share one pipeline "
        "root, so ingestion, statistics and validation run once per seed and Transform once per normalization; "
        "each cell retrains and re-evaluates.",
        "",
        f"**Gate setting**: `gate.max_macro_recall_drop` = {gate['gate.max_macro_recall_drop']} for the ablations. "
        "The Evaluator compares macro recall with the model published last *in the same pipeline root's serving "
        "dir*, so with the shipped 0.02 a cell's verdict would depend on which cells ran before it. With 1.0 that "
        "comparison can never fail, and the verdict is the per-class floor alone (every class's argmax recall >= "
        f"{gate['min_class_recall']}), the check aimed at the collapse the ablation reproduces. Separate roots per "
        "cell would keep the comparison meaningless too (no baseline) at 12x the ingestion and Transform cost.",
        "",
        "Values are mean (min–max) over seeds. Macro recall is the mean of per-class argmax recall, i.e. the "
        "balanced accuracy. *Majority share*: the fraction of eval predictions that go to the most predicted class "
        "(1.0 = a constant model). *Blessed*: seeds whose model the gate blessed.",
        "",
        "| streams | normalization | class weights | macro recall (= balanced accuracy) | "
        + " | ".join(names) + " | majority share | blessed |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for cell in data["cells"]:
        head = f"| {cell['streams']} | {cell['normalization']} | {cell['class_weights']} |"
        if "error" in cell:
            lines.append(f"{head} {cell['error']} |" + " |" * (len(names) + 2))
            continue
        lines.append(f"{head} {_spread(cell['macro_recall'])} | "
                     + " | ".join(_spread(cell["per_class_recall"][name]) for name in names)
                     + f" | {_spread(cell['majority_prediction_share'])} "
                     f"| {cell['blessed']}/{cell['seeds_measured']} |")
    failure = data["failure_cell"]
    lines += [
        "",
        f"**The seed's failure cell** ({failure['streams']} streams, normalization {failure['normalization']}, "
        f"class weights {failure['class_weights']}): *reproduced* means some class's recall fell under the gate's "
        f"floor {gate['min_class_recall']}; *refused* means the gate did not bless the model.",
        "",
        "| seed | macro recall | weakest class | majority share | reproduced | refused by the gate | gate failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in failure["per_seed"]:
        if "error" in run:
            lines.append(f"| {run['seed']} | {run['error']} | | | | | |")
            continue
        lowest = run["weakest_class"]
        lines.append(f"| {run['seed']} | {_r(run['macro_recall'])} | {lowest} {_r(run['per_class_recall'][lowest])} "
                     f"| {_r(run['majority_prediction_share'])} | {'yes' if run['collapsed'] else 'no'} "
                     f"| {'no' if run['blessed'] else 'yes'} | {'; '.join(run['failures']) or 'none'} |")
    return lines + ["", "![ablations](results.ablations.png)", ""]


def _scaling(data: dict[str, Any], results: dict[str, Any]) -> list[str]:
    runs = data["runs"]
    lines = [
        f"The default sample times {', '.join(str(run['multiple']) for run in runs)} (more scenes per span, same "
        "side), each in a new pipeline root: a fresh run and an immediate rerun, each in a fresh process.",
        "",
        "| data | scenes | patches | fresh process s | fresh pipeline s | cached process s | peak MiB fresh "
        "| peak MiB cached | fresh process s per 1,000 patches |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        fresh, cached = run["fresh"], run["cached"]
        patches = fresh["patches"]["total"]
        lines.append(f"| {run['multiple']}x | {run['scenes']} | {_n(patches)} | {_s(fresh['process_seconds'])} "
                     f"| {_s(fresh['pipeline_seconds'])} | {_s(cached['process_seconds'])} "
                     f"| {_n(fresh['peak_rss_mib'])} | {_n(cached['peak_rss_mib'])} "
                     f"| {1000 * fresh['process_seconds'] / patches:.2f} |")
    if data["marginal"]:
        lines += ["", "Marginal cost of added data (difference of fresh runs between consecutive sizes):", "",
                  "| from | to | process s per 1,000 patches | pipeline s per 1,000 patches |", "|---|---|---|---|"]
        lines += [f"| {m['from']}x | {m['to']}x | {m['process_seconds_per_1000_patches']:.2f} "
                  f"| {m['pipeline_seconds_per_1000_patches']:.2f} |" for m in data["marginal"]]
    lines += ["", "Fresh runs per component (seconds):", ""]
    lines += _component_rows({f"{run['multiple']}x fresh": run["fresh"] for run in runs})
    lines += ["", "Cached reruns per component (seconds):", ""]
    lines += _component_rows({f"{run['multiple']}x cached": run["cached"] for run in runs})
    mp = data["multi_processing"]
    in_memory, multi = mp["in_memory"]["fresh"], mp["multi_processing"]["fresh"]
    lines += [
        "",
        f"DirectRunner `in_memory` against `multi_processing` (`run.direct_running_mode`, one worker per core) on "
        f"fresh runs at {mp['multiple']}x (the largest size measured, where parallel workers could pay off):",
        "",
    ]
    lines += _run_rows({"in_memory": in_memory, "multi_processing": multi})
    lines += [""] + _component_rows({"in_memory": in_memory, "multi_processing": multi})
    return lines + ["", "![scaling](results.scaling.png)", "", "![components](results.components.png)", ""]


def _floor(data: dict[str, Any], results: dict[str, Any]) -> list[str]:
    lines = [
        "`python -m bench.floor` in a fresh process on the same data and config: the same scenes, pixels, blocks, "
        "per-channel z-scores (numpy), model, epochs, batch, class weights, seed and early stopping; no tf.Example "
        "encoding, statistics, validation, export or TFMA. *Work* excludes imports (the pipeline's `run_local` "
        "against the floor's stages); *process* is start to exit for both. The floor's process time is mostly "
        "imports: TensorFlow, and TFX and tf.Transform for the helpers it shares with the pipeline (span "
        "resolution, block assignment, the Trainer's recall callback), which a standalone script would not load.",
        "",
        "| data | patches | read s | normalise s | train s | evaluate s | floor work s | floor process s "
        "| pipeline s | pipeline process s | pipeline / floor (work) | pipeline / floor (process) "
        "| floor macro recall | floor epochs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        f = row["floor"]
        seconds = f["seconds"]
        lines.append(f"| {row['multiple']}x | {_n(sum(f['examples'].values()))} | {_s(seconds['read'])} "
                     f"| {_s(seconds['normalise'])} | {_s(seconds['train'])} | {_s(seconds['evaluate'])} "
                     f"| {_s(seconds['total'])} | {_s(f['process_seconds'])} | {_s(row['pipeline_seconds'])} "
                     f"| {_s(row['pipeline_process_seconds'])} | {row['work_ratio']:.1f} | {row['process_ratio']:.1f} "
                     f"| {_r(f['macro_recall'])} | {f['epochs_run']} |")
    return lines + [""]


def _where_time_goes(results: dict[str, Any]) -> list[str]:
    """Per component of the fresh default-sample run: its share, how it grows with data, and what it compares to."""
    run = results.get("pipeline")
    if not run or "error" in run:
        return []
    fresh, cached = run["fresh"], run["cached"]
    costs = results.get("scaling", {}).get("component_costs", {})
    lines = ["## Where the time goes", "",
             f"Fresh run on the default sample: {_s(fresh['process_seconds'])} s of process, of which "
             f"{_s(fresh['process_seconds'] - fresh['pipeline_seconds'])} s outside `run_local` (Python start-up, "
             "TensorFlow/TFX imports, exit) and "
             f"{_s(fresh['pipeline_seconds'] - sum(c['seconds'] for c in fresh['components'].values()))} s inside "
             "it but outside any component (compiling the DAG, ML Metadata, drivers). The cached rerun: "
             f"{_s(cached['process_seconds'])} s of process, {_s(cached['pipeline_seconds'])} s of `run_local`.",
             ""]
    small = []
    for node, component in sorted(fresh["components"].items(), key=lambda item: -item[1]["seconds"]):
        rerun = cached["components"].get(node, {"state": "not run", "seconds": 0.0})
        if max(component["seconds"], rerun["seconds"]) < SMALL_SECONDS and node not in costs:
            small.append(node)
            continue
        line = (f"- **{node}**: {_s(component['seconds'])} s fresh "
                f"({100 * component['seconds'] / fresh['pipeline_seconds']:.0f} % of `run_local`); on the rerun "
                f"{_s(rerun['seconds'])} s, {rerun['state'].lower()}")
        if rerun["state"] != "CACHED":
            line += " (executed again, not served from the cache)"
        if node in costs:
            line += (f"; across sizes about {_s(costs[node]['fixed_seconds'])} s fixed + "
                     f"{costs[node]['seconds_per_1000_patches']:.2f} s per 1,000 patches")
        lines.append(line + _component_note(node, results) + ".")
    if small:
        lines.append(f"- Under {SMALL_SECONDS} s each, fresh and on the rerun: {', '.join(small)}.")
    return lines + [""]


def _component_note(node: str, results: dict[str, Any]) -> str:
    """What else the bench measured that explains this component's time."""
    fresh = results["pipeline"]["fresh"]
    if node == "SceneExampleGen" and fresh["patches"] and "ingest" in results and "error" not in results["ingest"]:
        rate = results["ingest"]["sets"][0]["patches_per_second"]
        return (f"; `scene_examples` alone would take {_s(fresh['patches']['total'] / rate)} s for these patches, "
                "the rest is Beam, block assignment and TFRecord writing")
    if node == "Trainer" and fresh["trainer"]:
        t = fresh["trainer"]
        note = f"; {_n(t['examples_per_second'])} training examples/s over {t['epochs_run']} epoch(s)"
        if t.get("inside"):
            inside = t["inside"]
            note += (f"; inside it, `run_fn` spent {_s(inside['before_fit'])} s before `fit` (Transform graph, "
                     f"datasets, model), {_s(inside['fit'])} s in `fit` and the remaining "
                     f"{_s(t['seconds'] - inside['before_fit'] - inside['fit'])} s of the component in the export "
                     "and TFX's own work (user-code wheel install, process set-up)")
        floor = results.get("floor", {}).get("rows")
        if floor:
            note += f"; the floor trains the same model in {_s(floor[0]['floor']['seconds']['train'])} s"
        return note
    if node == "Transform" and results.get("floor", {}).get("rows"):
        return (f"; the floor's numpy normalisation of the same patches takes "
                f"{_s(results['floor']['rows'][0]['floor']['seconds']['normalise'])} s")
    if node == "Evaluator" and results.get("floor", {}).get("rows"):
        return (f"; the floor's argmax recall on the same eval split takes "
                f"{_s(results['floor']['rows'][0]['floor']['seconds']['evaluate'])} s")
    return ""


def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.scaling.png (time and memory against data size), results.components.png and
    results.ablations.png: those the data allows (named results.* as the benchmark's committed record)."""
    written = []
    scaling, floor = results.get("scaling", {}), results.get("floor", {})
    if "runs" in scaling:
        fig, (times, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
        patches = [run["fresh"]["patches"]["total"] for run in scaling["runs"]]
        for label, kind, key in (("pipeline fresh (process)", "fresh", "process_seconds"),
                                 ("pipeline fresh (run_local)", "fresh", "pipeline_seconds"),
                                 ("pipeline cached (process)", "cached", "process_seconds")):
            times.plot(patches, [run[kind][key] for run in scaling["runs"]], "o-", label=label)
        memory.plot(patches, [run["fresh"]["peak_rss_mib"] for run in scaling["runs"]], "o-", label="pipeline fresh")
        if "rows" in floor:
            floor_patches = [sum(row["floor"]["examples"].values()) for row in floor["rows"]]
            times.plot(floor_patches, [row["floor"]["process_seconds"] for row in floor["rows"]], "s--",
                       label="floor (process)")
            times.plot(floor_patches, [row["floor"]["seconds"]["total"] for row in floor["rows"]], "s--",
                       label="floor (work)")
            memory.plot(floor_patches, [row["floor"]["peak_rss_mib"] for row in floor["rows"]], "s--", label="floor")
        times.set(xlabel="patches", ylabel="seconds", title="Wall time against data size")
        memory.set(xlabel="patches", ylabel="MiB", title="Peak memory against data size")
        for axes in (times, memory):
            if max(patches) >= 10 * min(patches):
                axes.set_xscale("log")
            axes.grid(alpha=0.3)
            axes.legend()
        written.append(_save(fig, out_dir / "results.scaling.png"))

        written.append(_save(_components_figure(scaling["runs"]), out_dir / "results.components.png"))

    ablations = results.get("ablations", {})
    if "cells" in ablations:
        cells = [cell for cell in ablations["cells"] if "error" not in cell]
        fig, axes = plt.subplots(figsize=(12, 5))
        x = range(len(cells))
        macro = [cell["macro_recall"] for cell in cells]
        lowest = [min(cell["per_class_recall"].values(), key=lambda s: s["mean"]) for cell in cells]
        for stats, label, marker in ((macro, "macro recall", "o"), (lowest, "lowest class recall", "v")):
            axes.errorbar(x, [s["mean"] for s in stats],
                          yerr=[[s["mean"] - s["min"] for s in stats], [s["max"] - s["mean"] for s in stats]],
                          fmt=marker, capsize=3, label=f"{label} (mean, min–max over seeds)")
        axes.axhline(ablations["gate"]["min_class_recall"], color="red", linestyle=":", label="gate floor per class")
        axes.set_xticks(list(x))
        axes.set_xticklabels([f"{c['streams']}\n{c['normalization']}\n{c['class_weights']}\n"
                              f"blessed {c['blessed']}/{c['seeds_measured']}" for c in cells], fontsize=7)
        axes.set(ylabel="eval argmax recall", ylim=(0, 1.05),
                 title="Ablations: streams / normalization / class weights")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        written.append(_save(fig, out_dir / "results.ablations.png"))
    return written


def _components_figure(runs: list[dict[str, Any]]):
    """One bar per size and run kind: each component of at least MIN_SEGMENT_SECONDS somewhere, the rest
    together, `run_local`'s time outside any component, and the process time outside `run_local`."""
    bars = {f"{run['multiple']}x {kind}": run[kind] for run in runs for kind in ("fresh", "cached")}
    shown = [node for node in runs[0]["fresh"]["components"]
             if any(bar["components"].get(node, {"seconds": 0.0})["seconds"] >= MIN_SEGMENT_SECONDS
                    for bar in bars.values())]
    segments = {node: [bar["components"].get(node, {"seconds": 0.0})["seconds"] for bar in bars.values()]
                for node in shown}
    segments["other components"] = [sum(c["seconds"] for node, c in bar["components"].items() if node not in shown)
                                    for bar in bars.values()]
    segments["run_local between components (compile, ML Metadata, drivers)"] = [
        bar["pipeline_seconds"] - sum(c["seconds"] for c in bar["components"].values()) for bar in bars.values()]
    segments["outside run_local (start-up, imports)"] = [bar["process_seconds"] - bar["pipeline_seconds"]
                                                         for bar in bars.values()]
    fig, axes = plt.subplots(figsize=(13, 1.5 + 0.5 * len(bars)))
    left = [0.0] * len(bars)
    colours = plt.get_cmap("tab20").colors
    for colour, (label, widths) in zip(colours, segments.items()):
        axes.barh(list(bars), widths, left=left, label=label, color=colour)
        left = [a + b for a, b in zip(left, widths)]
    axes.invert_yaxis()
    axes.set(xlabel="seconds (process wall)", title="Where a run's time goes, per component")
    axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
