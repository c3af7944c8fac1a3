"""`terrafuse report --html FILE`: one self-contained HTML page per run, saying why its model was blessed or refused.

Everything on the page is what the run recorded, read through pipeline.summary (ML Metadata, the gates' reports,
the Evaluator's output) under the run's own config (`summary.recorded_config`), never the command line's: a run
with its own class table is shown with its own class names and floors. The one thing made for the page is the
class-map preview, which maps one scene with the run's model through pipeline.predict.

The figures are matplotlib PNGs inlined as data: URIs and the style sheet is inline; the page has no script. It
fetches nothing when viewed, so it can be archived or mailed as one file and opened offline.
"""
from __future__ import annotations

import base64
import glob
import html
import io
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foundation.config import SPLITS, TEST, TRAIN, Config, ConfigError, resolve_path
from foundation.scene_folder import span_folder
from pipeline import summary
from pipeline.component_ids import DATA_GATE, DRIFT_GATE, EVALUATOR, SCENE_EXAMPLE_GEN, STATISTICS_GEN
from pipeline.summary import ComponentRun

PAGE_FILE = "report.html"  # `terrafuse run` writes the page of each run here, under the pipeline root
BLESSED, NOT_BLESSED, STOPPED, NOT_EVALUATED = "BLESSED", "NOT BLESSED", "STOPPED", "NOT EVALUATED"
_STATE_COLOURS = {"COMPLETE": "#4c78a8", "CACHED": "#9ecae9", "FAILED": "#e45756"}
_TRAIN_COLOUR, _TEST_COLOUR, _LIMIT_COLOUR, _OVER_COLOUR = "#4c78a8", "#f58518", "#222222", "#e45756"
_SERVING_COLOUR = "#bbbbbb"


@dataclass
class RunRecord:
    """What one run recorded, read once for the page."""

    run_id: str
    pipeline_root: str
    config: Config  # the run's own (summary.recorded_config)
    runs: list[ComponentRun]
    span: int | None
    ingest: dict[str, Any] | None
    gates: dict[str, dict[str, Any]]
    evaluation: Any  # models.evaluation.EvaluationSummary, or None when no model was evaluated
    baseline: summary.Baseline
    stopped: ComponentRun | None

    @property
    def verdict(self) -> str:
        if self.stopped is not None:
            return STOPPED
        if self.evaluation is None:
            return NOT_EVALUATED
        return BLESSED if self.evaluation.blessed else NOT_BLESSED


def read_run(pipeline_root: str, run_id: str | None = None) -> RunRecord:
    """The newest run recorded under `pipeline_root` (or `run_id`). ConfigError when there is none."""
    located = Config().replace({"run.pipeline_root": pipeline_root})
    ids = summary.run_ids(located)
    if not ids:
        raise ConfigError(f"{located.metadata_path}: no run recorded (run `terrafuse run` first, or give the "
                          f"pipeline root the run used with --pipeline-root)")
    runs = summary.last_run(located, run_id)
    config = summary.recorded_config(runs, pipeline_root)
    return RunRecord(
        run_id=run_id or ids[-1], pipeline_root=resolve_path(pipeline_root), config=config, runs=runs,
        span=summary.span(runs), ingest=summary.ingest_report(runs), gates=summary.gate_reports(runs),
        evaluation=summary.evaluation(runs, config), baseline=summary.baseline(runs), stopped=summary.stopped(runs))


def write_report(pipeline_root: str, html_file: str | os.PathLike | None = None, run_id: str | None = None) -> Path:
    """Writes the page of the newest run (or `run_id`) to `html_file` (default: PAGE_FILE under the pipeline root)
    and returns its path."""
    page = render_html(read_run(pipeline_root, run_id))
    path = Path(html_file) if html_file else Path(pipeline_root) / PAGE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(page, encoding="utf-8")
    staging.replace(path)  # a page that is being rewritten is never seen half-written
    return path.resolve()


def render_html(record: RunRecord) -> str:
    skew = _skew(record)
    sections = [
        _verdict_section(record),
        _data_section(record),
        _distribution_section(record, skew),
        _divergence_section(record, skew),
        _evaluation_section(record),
        _preview_section(record),
        _duration_section(record),
        _config_section(record),
    ]
    title = f"terrafuse run {record.run_id}: {record.verdict}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            # No script, no fetch: images are data: URIs. The policy makes the browser enforce it.
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            f"style-src 'unsafe-inline'\">\n"
            f"<title>{_text(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{_text(title)}</h1>\n{_run_facts(record)}\n{''.join(sections)}</body>\n</html>\n")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 0.2em 0.7em; border-bottom: 1px solid #eee; }
th { text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-size: 1.3em; font-weight: bold; padding: 0.4em 0.8em; display: inline-block; border-radius: 4px; }
.BLESSED { background: #d9f0d3; } .NOT-BLESSED, .STOPPED { background: #f9d3d0; } .NOT-EVALUATED { background: #eee; }
.fail { color: #b2182b; font-weight: bold; } .pass { color: #1b7837; }
img { max-width: 100%; } pre { white-space: pre-wrap; background: #f6f6f6; padding: 0.5em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; } dl.facts dt { color: #555; }
"""


def _text(value: Any) -> str:
    return html.escape(str(value))


def _image(png: bytes, alt: str) -> str:
    return f"<img alt=\"{_text(alt)}\" src=\"data:image/png;base64,{base64.b64encode(png).decode('ascii')}\">"


def _figure_png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: the figures only become PNG bytes
    import matplotlib.pyplot as plt

    return plt


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"n\">{cell}</td>" if i in numeric else f"<td>{cell}</td>"
                                    for i, cell in enumerate(row)) + "</tr>\n" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>\n"


def _run_facts(record: RunRecord) -> str:
    facts = [("run", record.run_id), ("pipeline root", record.pipeline_root),
             ("data root", record.config.run.data_root),
             ("span", "not read" if record.span is None else f"{record.span} ({span_folder(record.span)})"),
             ("serving dir", record.config.serving_dir)]
    return "<dl class=\"facts\">" + "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in facts) + "</dl>"


def _verdict_section(record: RunRecord) -> str:
    verdict = record.verdict
    parts = [f"<h2>Verdict</h2>\n<p><span class=\"verdict {verdict.replace(' ', '-')}\">{_text(verdict)}</span></p>"]
    if record.stopped is not None:
        message = record.stopped.stop_message or "no message recorded (the run was not started by terrafuse run)"
        parts.append(f"<p>The run stopped at <b>{_text(record.stopped.node)}</b>:</p>\n<pre>{_text(message)}</pre>")
    elif record.evaluation is not None and not record.evaluation.blessed:
        parts.append(f"<p>The Evaluator refused the model on the test split: {len(record.evaluation.failures)} "
                     f"failing check(s).</p>")
        parts.append("<ul class=\"failures\">" + "".join(f"<li class=\"fail\">{_text(failure)}</li>"
                                                          for failure in record.evaluation.failures) + "</ul>")
    elif record.evaluation is not None:
        parts.append("<p>The model passed every check of the gate on the test split.</p>")
    blessed = None if record.evaluation is None else record.evaluation.blessed
    parts.append(f"<p class=\"push\">{_text(summary.push_outcome(record.runs, blessed))}</p>")
    return "\n".join(parts) + "\n"


def _data_section(record: RunRecord) -> str:
    parts = ["<h2>Data: patches per split and class, and what was removed</h2>"]
    report = record.ingest
    if report is None:
        return parts[0] + "<p>SceneExampleGen recorded no ingest report in this run.</p>\n"
    names = list(record.config.class_names)
    per_class = report["patches_per_class"]
    rows = [[_text(name), *(per_class[split].get(name, 0) for split in SPLITS)] for name in names]
    rows.append(["<b>all</b>", *(f"<b>{report['patches_per_split'][split]}</b>" for split in SPLITS)])
    parts.append(_table(["class", *SPLITS], rows, numeric={1, 2, 3}))
    parts.append(f"<p>{_text(summary.split_line(report))}.</p>")
    scene_rows = []
    for scene, found in sorted(report["scenes"].items()):
        share = "no labels" if found["valid_share"] is None else f"{100 * found['valid_share']:.1f} %"
        masked = found["masked_pixels"]
        scene_rows.append([_text(scene), found["labelled_pixels"], found["valid_labelled_pixels"], share,
                           found["patches"],
                           _text(", ".join(f"{stream} {n}" for stream, n in masked.items() if stream != "labels")),
                           masked["labels"],
                           _text(", ".join(f"{channel} {n}" for channel, n in found["lidar_filled_cells"].items()))])
    parts.append("<p>Per scene: labelled pixels whose window is valid in every stream, pixels each stream's mask "
                 "removed, and LiDAR cells filled from returns within the allowed gap.</p>")
    parts.append(_table(["scene", "labelled pixels", "valid", "valid share", "patches", "masked per stream",
                         "unlabelled or label nodata", "LiDAR cells filled"], scene_rows, numeric={1, 2, 3, 4, 6}))
    parts += [f"<p class=\"fail\">bad scene: {_text(problem)}</p>" for problem in report.get("bad_scenes", [])]
    return "\n".join(parts) + "\n"


@dataclass
class _Skew:
    """The run's statistics per split, and the label and feature divergences train vs test with their limits."""

    by_split: dict[str, Any] | None
    divergences: list[dict[str, Any]]
    feature_divergences: list[dict[str, Any]]
    note: str = ""


def _skew(record: RunRecord) -> _Skew:
    """The DataGate's figures; when it failed, and so published no report, the same figures measured again by the
    gate's own functions on the run's statistics and limits."""
    from dataclasses import asdict

    from tfx.types import standard_artifacts

    from components.data_gate import evaluate, feature_skew, split_statistics
    from components.label_counts import label_counts

    artifact = summary.output(record.runs, STATISTICS_GEN, "statistics")
    if artifact is None:
        return _Skew(None, [], [])
    statistics = standard_artifacts.ExampleStatistics()
    statistics.set_mlmd_artifact(artifact)
    by_split = split_statistics(statistics)
    report = record.gates.get(DATA_GATE)
    if report is not None:
        return _Skew(by_split, report["divergences"], report["feature_divergences"])
    config = record.config
    counts = {split: label_counts(dataset, config.class_ids) for split, dataset in by_split.items()}
    measured = evaluate(config, counts, [], [], feature_skew(config, by_split[TRAIN], by_split[TEST]))
    return _Skew(by_split, [asdict(d) for d in measured.divergences],
                 [asdict(d) for d in measured.feature_divergences],
                 "The DataGate stopped the run and so published no report: the train vs test figures below are "
                 "measured again from the run's statistics by the gate's own functions, under the run's limits.")


def _distribution_section(record: RunRecord, skew: _Skew) -> str:
    from components.data_gate import feature_name
    from transforms.features import layout

    heading = "<h2>Per band and per channel: value distributions, train against test</h2>"
    by_split = skew.by_split
    if by_split is None:
        return heading + "<p>No statistics were computed in this run.</p>\n"
    js = {d["feature"]: d for d in skew.feature_divergences}
    features = layout(record.config).stream_features
    found = {split: {feature_name(f): f for f in dataset.features} for split, dataset in by_split.items()}
    plt = _pyplot()
    columns = min(4, len(features))
    rows = math.ceil(len(features) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.6 * rows), squeeze=False)
    for ax, feature in zip(axes.flat, features):
        for split, colour in ((TRAIN, _TRAIN_COLOUR), (TEST, _TEST_COLOUR)):
            statistics = found[split].get(feature)
            if statistics is not None:
                edges, shares = _cumulative(statistics)
                ax.plot(edges, shares, color=colour, label=split, drawstyle="default")
        title = feature
        if feature in js:
            d = js[feature]
            title += f"\nJS {d['js']:.3f} (limit {d['limit']:g})"
            if d["js"] > d["limit"]:
                ax.set_facecolor("#fde0dd")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(features):]:
        ax.axis("off")
    figure.supylabel("share of values at or below", fontsize=9)
    figure.tight_layout()
    png = _figure_png(figure)
    return (f"{heading}\n<p>Cumulative share of each feature's values (every pixel of every patch) per split, from "
            f"the run's StatisticsGen statistics (decile histograms, the ones the gate compares); the title gives "
            f"the Jensen-Shannon divergence train vs test against its limit.</p>\n"
            f"{_image(png, 'value distributions per band and channel, train against test')}\n")


def _cumulative(statistics) -> tuple[np.ndarray, np.ndarray]:
    """x and cumulative share from a feature's QUANTILES histogram (equal-mass buckets)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    histograms = [h for h in statistics.num_stats.histograms
                  if h.type == statistics_pb2.Histogram.QUANTILES] or list(statistics.num_stats.histograms)
    if not histograms or not histograms[0].buckets:
        return np.array([]), np.array([])
    buckets = histograms[0].buckets
    counts = np.array([b.sample_count for b in buckets])
    edges = np.array([buckets[0].low_value] + [b.high_value for b in buckets])
    shares = np.concatenate([[0.0], np.cumsum(counts) / max(counts.sum(), 1e-12)])
    return edges, shares


def _divergence_section(record: RunRecord, skew: _Skew) -> str:
    heading = "<h2>Skew and drift against their limits</h2>"
    drift = record.gates.get(DRIFT_GATE) or {}
    divergences = skew.divergences + drift.get("divergences", [])
    feature_divergences = skew.feature_divergences + drift.get("feature_divergences", [])
    parts = [heading] + ([f"<p>{_text(skew.note)}</p>"] if skew.note else [])
    if divergences:
        names = dict(zip(record.config.class_ids, record.config.class_names))
        rows = [[_text(d["comparison"]), _judged(d["linf"], d["linf_max"]), d["linf_max"],
                 _judged(d["js"], d["js_max"], 4), d["js_max"],
                 _text(f"{names.get(d['moved_class'], d['moved_class'])}: {100 * d['share_a']:.1f} % vs "
                       f"{100 * d['share_b']:.1f} %")] for d in divergences]
        parts.append("<p>Label distributions:</p>")
        parts.append(_table(["comparison", "L-infinity", "limit", "Jensen-Shannon", "limit", "class that moved most"],
                            rows, numeric={1, 2, 3, 4}))
    if feature_divergences:
        parts.append("<p>Each band's and LiDAR channel's values (Jensen-Shannon divergence, TFDV, decile "
                     "histograms):</p>")
        parts.append(_image(_divergence_png(feature_divergences), "Jensen-Shannon divergence per feature against "
                                                                   "its limit"))
        rows = [[_text(d["comparison"]), _text(d["feature"]), _judged(d["js"], d["limit"], 4), d["limit"]]
                for d in feature_divergences]
        parts.append(_table(["comparison", "feature", "Jensen-Shannon", "limit"], rows, numeric={2, 3}))
    skipped = drift.get("skipped", [])
    if skipped:
        parts.append("<p>Not compared for drift:</p><ul>" + "".join(f"<li>{_text(s)}</li>" for s in skipped) + "</ul>")
    if record.stopped is not None and record.stopped.node == DRIFT_GATE:
        parts.append("<p>The DriftGate stopped the run and so published no report: its figures are in its message "
                     "under Verdict.</p>")
    elif not (divergences or feature_divergences or skipped):
        parts.append("<p>No gate measured skew or drift in this run.</p>")
    return "\n".join(parts) + "\n"


def _judged(value: float, limit: float, digits: int = 3) -> str:
    over = value > limit
    return f"<span class=\"{'fail' if over else 'pass'}\">{value:.{digits}f}{' over' if over else ''}</span>"


def _divergence_png(divergences: list[dict[str, Any]]) -> bytes:
    plt = _pyplot()
    labels = [f"{d['feature']}  ({'drift' if 'blessed' in d['comparison'] else d['comparison']})"
              for d in divergences]
    values = [d["js"] for d in divergences]
    limits = [d["limit"] for d in divergences]
    figure, ax = plt.subplots(figsize=(7.5, 0.32 * len(divergences) + 0.9))
    y = np.arange(len(divergences))
    ax.barh(y, values, color=[_OVER_COLOUR if v > lim else _TRAIN_COLOUR for v, lim in zip(values, limits)])
    ax.scatter(limits, y, marker="|", s=300, color=_LIMIT_COLOUR, label="limit", zorder=3)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Jensen-Shannon divergence")
    ax.set_xlim(0, max(values + limits) * 1.15 or 1)
    ax.legend(fontsize=8)
    return _figure_png(figure)


def _evaluation_section(record: RunRecord) -> str:
    heading = "<h2>The test split: per-class recall against the floors and the serving model</h2>"
    result = record.evaluation
    if result is None:
        return heading + "<p>No model was evaluated in this run.</p>\n"
    config = record.config
    gate = config.gate
    names = list(config.class_names)
    floors = dict(zip(names, config.class_recall_floors))
    changes = result.per_class_recall_change if record.baseline.comparable else None
    rows = []
    for name in names:
        recall = result.per_class_recall[name]
        examples = result.per_class_test_examples[name]
        few = examples < gate.min_test_examples_per_class
        below = math.isnan(recall) or recall < floors[name]
        dropped = changes is not None and not changes[name] >= -gate.max_class_recall_drop
        cells = [f"<span class=\"{'fail' if few or below or dropped else 'pass'}\">{_text(name)}</span>",
                 _mark(examples, few, "{:d}"), _mark(recall, below, "{:.3f}"), f"{floors[name]:.2f}"]
        if changes is not None:
            cells += [_mark(recall - changes[name], False, "{:.3f}"), _mark(changes[name], dropped, "{:+.3f}")]
        rows.append(cells)
    header = ["class", f"test examples (min {gate.min_test_examples_per_class})", "recall", "floor"]
    if changes is not None:
        header += ["serving model", f"change (max drop {gate.max_class_recall_drop:.2f})"]
    parts = [heading, _table(header, rows, numeric=set(range(1, len(header))))]
    macro_change = "" if result.macro_recall_change is None or not record.baseline.comparable else (
        f", {result.macro_recall_change:+.3f} against the serving model (max drop {gate.max_macro_recall_drop:.2f})")
    parts.append(f"<p>Macro recall {result.macro_recall:.3f}{_text(macro_change)} over {result.example_count} test "
                 f"examples. The most predicted class, {_text(result.most_predicted_class)}, takes "
                 f"{100 * result.majority_prediction_share:.1f} % of the predictions, {result.majority_excess:+.3f} "
                 f"beyond its share of the test labels (max {gate.max_majority_excess:.2f}).</p>")
    parts.append(f"<p>Baseline: {_text(record.baseline.source or 'none recorded')}"
                 + ("" if record.baseline.comparable else " (so no comparison with a serving model is shown)")
                 + ".</p>")
    serving = None if changes is None else [result.per_class_recall[n] - changes[n] for n in names]
    parts.append(_image(_recall_png(names, [result.per_class_recall[n] for n in names], [floors[n] for n in names],
                                    serving), "per-class recall with floors"))
    from models.evaluation import confusion_matrix  # TFMA loads only for a page that shows an evaluation

    evaluation = summary.output(record.runs, EVALUATOR, "evaluation")
    matrix = confusion_matrix(evaluation.uri, len(names))
    if matrix is None:
        parts.append("<p>The Evaluator's output holds no confusion matrix (it was written by a version of the gate "
                     "without MultiClassConfusionMatrixPlot).</p>")
    else:
        parts.append("<p>Confusion matrix on the test split, each row normalised to the class's test examples "
                     "(the diagonal is each class's recall):</p>")
        parts.append(_image(_confusion_png(matrix, names), "row-normalised confusion matrix"))
    return "\n".join(parts) + "\n"


def _mark(value: float, bad: bool, form: str) -> str:
    shown = "n/a" if isinstance(value, float) and math.isnan(value) else form.format(value)
    return f"<span class=\"{'fail' if bad else 'pass'}\">{shown}</span>"


def _recall_png(names: list[str], recalls: list[float], floors: list[float], serving: list[float] | None) -> bytes:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(max(5.0, 1.0 * len(names) + 1.5), 3.4))
    x = np.arange(len(names))
    shown = [0.0 if math.isnan(r) else r for r in recalls]
    colours = [_OVER_COLOUR if math.isnan(r) or r < f else _TRAIN_COLOUR for r, f in zip(recalls, floors)]
    width = 0.38 if serving is not None else 0.6
    offset = width / 2 if serving is not None else 0.0
    ax.bar(x - offset, shown, width, color=colours)
    if serving is not None:
        ax.bar(x + offset, [0.0 if math.isnan(s) else s for s in serving], width, color=_SERVING_COLOUR)
    ax.hlines(floors, x - 0.45, x + 0.45, colors=_LIMIT_COLOUR, linestyles="--")
    for xi, r in zip(x - offset, recalls):
        ax.text(xi, (0 if math.isnan(r) else r) + 0.02, "n/a" if math.isnan(r) else f"{r:.2f}", ha="center",
                fontsize=8)
    ax.set_xticks(x, names, rotation=20, fontsize=9)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("argmax recall (test split)")
    handles = [Patch(color=_TRAIN_COLOUR, label="this model"), Patch(color=_OVER_COLOUR, label="below its floor"),
               Line2D([], [], color=_LIMIT_COLOUR, linestyle="--", label="floor")]
    if serving is not None:
        handles.insert(2, Patch(color=_SERVING_COLOUR, label="serving model"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _figure_png(figure)


def _confusion_png(matrix: np.ndarray, names: list[str]) -> bytes:
    plt = _pyplot()
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, matrix / totals, np.nan)
    size = 1.0 + 0.75 * len(names)
    figure, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            if not math.isnan(shares[i, j]):
                ax.text(j, i, f"{shares[i, j]:.2f}\n({matrix[i, j]:.0f})", ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("labelled class")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the labelled class")
    return _figure_png(figure)


def _test_blocks(record: RunRecord) -> dict[str, list[str]]:
    """Per scene, the blocks of the test split's examples (what the Evaluator judged there)."""
    import tensorflow as tf

    from transforms.features import BLOCK_ID, SCENE_ID

    examples = summary.output(record.runs, SCENE_EXAMPLE_GEN, "examples")
    files = glob.glob(os.path.join(examples.uri, f"Split-{TEST}", "*")) if examples is not None else []
    blocks: dict[str, set[str]] = {}
    spec = {SCENE_ID: tf.io.FixedLenFeature([], tf.string), BLOCK_ID: tf.io.FixedLenFeature([], tf.string)}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096) if files else []:
        parsed = tf.io.parse_example(batch, spec)
        for scene, block in zip(parsed[SCENE_ID].numpy(), parsed[BLOCK_ID].numpy()):
            blocks.setdefault(scene.decode(), set()).add(block.decode())
    return {scene: sorted(found) for scene, found in blocks.items()}


def _preview_section(record: RunRecord) -> str:
    heading = "<h2>Class map of a test scene beside its labels</h2>"
    model = summary.model_dir(record.runs)
    if model is None or record.span is None:
        return heading + "<p>No model was trained in this run: nothing to map.</p>\n"
    test_blocks = _test_blocks(record)
    if not test_blocks:
        return heading + "<p>The test split holds no examples: no test scene to map.</p>\n"
    scene = max(sorted(test_blocks), key=lambda s: len(test_blocks[s]))  # the scene the test split draws on most
    scene_dir = os.path.join(record.config.run.data_root, span_folder(record.span), scene)
    try:
        png, recall = _preview_png(model, scene_dir, record.config, test_blocks[scene])
    except Exception as err:  # the page shows everything else; it says why this part is missing
        return heading + f"<p>No preview: mapping {_text(scene_dir)} failed: {_text(type(err).__name__)}: " \
                         f"{_text(err)}</p>\n"
    per_class = ", ".join(f"{name} {'n/a' if math.isnan(r) else f'{r:.3f}'}" for name, r in recall.items())
    return (f"{heading}\n<p>Scene {_text(scene)} of span {record.span}, mapped whole by this run's model "
            f"(terrafuse predict); outlined: the blocks its test examples come from. Recall of the map on every "
            f"labelled pixel it classified: {_text(per_class)}.</p>\n"
            f"{_image(png, f'class map of {scene} beside its labels')}\n")


def _preview_png(model: str, scene_dir: str, config: Config, blocks: list[str]) -> tuple[bytes, dict[str, float]]:
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    from components.scenes import load_scene
    from pipeline.predict import NODATA, class_colours, predict_scene

    with tempfile.TemporaryDirectory(prefix="terrafuse-preview-") as out:
        result = predict_scene(model, scene_dir, out, progress="off")
        with rasterio.open(result.map_path) as mapped:
            classes = mapped.read(1)
    labels = load_scene(scene_dir, config).labels
    colours = class_colours(config)
    ids = [NODATA, *config.class_ids]
    palette = ListedColormap([(1, 1, 1)] + [tuple(c / 255 for c in colours[i]) for i in config.class_ids])
    lookup = np.zeros(max(ids) + 1, np.int64)
    lookup[list(config.class_ids)] = np.arange(1, len(config.class_ids) + 1)
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    block = config.ingest.block_size
    for ax, raster, title in ((axes[0], classes, "class map (predict)"), (axes[1], labels, "labels")):
        ax.imshow(lookup[np.clip(raster, 0, max(ids))], cmap=palette, vmin=0, vmax=len(ids) - 1,
                  interpolation="nearest")
        for block_id in blocks:
            row, col = (int(v) for v in block_id.rsplit("/", 1)[-1].split("_"))
            ax.add_patch(Rectangle((col * block - 0.5, row * block - 0.5), block, block, fill=False,
                                   edgecolor="black", linewidth=1.0))
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=tuple(c / 255 for c in colours[i]), label=name)
               for i, name in zip(config.class_ids, config.class_names)]
    handles.append(Patch(facecolor="white", edgecolor="#999", label="no class / unlabelled"))
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    return _figure_png(figure), result.recall or {}


def _duration_section(record: RunRecord) -> str:
    heading = "<h2>Components: state and duration</h2>"
    runs = record.runs
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(7.5, 0.3 * len(runs) + 0.9))
    y = np.arange(len(runs))
    ax.barh(y, [r.seconds for r in runs], color=[_STATE_COLOURS.get(r.state, "#bbbbbb") for r in runs])
    ax.set_yticks(y, [f"{r.node} ({r.state.lower()})" for r in runs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    rows = [[_text(r.node), f"<span class=\"{'fail' if r.state == summary.FAILED else 'pass'}\">{_text(r.state)}"
             f"</span>", f"{r.seconds:.1f}"] for r in runs]
    return (f"{heading}\n{_image(_figure_png(figure), 'seconds per component')}\n"
            f"{_table(['component', 'state', 'seconds'], rows, numeric={2})}"
            f"<p>Total {sum(r.seconds for r in runs):.1f} s of component time.</p>\n")


def _config_section(record: RunRecord) -> str:
    import json

    return ("<h2>The run's config</h2>\n<p>As its components recorded it in ML Metadata (sections no component "
            "of this run reads are at their defaults).</p>\n<details><summary>config</summary><pre>"
            f"{_text(json.dumps(record.config.to_dict(), indent=1))}</pre></details>\n")
