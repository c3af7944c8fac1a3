"""The broken-scene corpus (tests/broken_scenes.py) through what the ExampleGen executor runs per scene, and a
data root holding all of it through the executor: every bad scene named, every good scene kept."""
import logging

import numpy as np
import pytest
from broken_scenes import ACCEPTS, CONFIG, KINDS, NAN_BLOCK, REJECTS, Reject, good_scenes, write_corpus
from rasterio.errors import CRSError
from test_scene_example_gen import read_split, run_executor

import components.scene_example_gen
import components.scenes
from components.scene_example_gen import BadScenesError, ingest_scene, read_ingest_report
from components.scenes import SceneError, load_scene
from foundation.config import SPLITS
from foundation.scene_folder import LABELS_FILE, LAZ_FILE, span_folder
from transforms.features import SCENE_ID

GOOD_COPIES = 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The data root with every kind and GOOD_COPIES unchanged scenes, and each sample grid's good rasters."""
    work_dir = tmp_path_factory.mktemp("corpus")
    root = write_corpus(work_dir, good_copies=GOOD_COPIES)
    good = {grids: load_scene(scene_dir, CONFIG) for grids, scene_dir in good_scenes(work_dir / "again").items()}
    return root, good


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
def test_each_broken_kind_has_its_outcome(corpus, kind):
    root, good = corpus
    scene_dir = root / span_folder(1) / kind.name
    if isinstance(kind.outcome, Reject):
        with pytest.raises(SceneError) as raised:
            ingest_scene(str(scene_dir), CONFIG, str(root))
        err = raised.value
        assert err.scene == kind.name
        assert err.path == str(scene_dir / kind.outcome.file).rstrip("/")
        assert kind.outcome.defect in err.problem, err.problem
        assert str(err).startswith(f"scene {kind.name}: {err.path}: ")
        return
    examples = ingest_scene(str(scene_dir), CONFIG, str(root))
    assert examples.serialized and {key[0] for key in examples.keys} == {kind.name}
    kind.outcome.check(load_scene(scene_dir, CONFIG), good[kind.grids])


def test_a_masked_region_is_counted_in_the_report(corpus):
    root, _ = corpus
    examples = ingest_scene(str(root / span_folder(1) / "nan-regions"), CONFIG, str(root))
    rows, cols = NAN_BLOCK
    assert examples.summary.report["masked_pixels"]["multispectral"] == (rows.stop - rows.start) * (
        cols.stop - cols.start)


def _raise_in(monkeypatch, module, name, error, scene=None):
    """Makes module.name raise `error` (only while reading `scene`, if given)."""
    original = getattr(module, name)

    def failing(*args, **kwargs):
        if scene is None or scene in str(args[0]) or any(scene in str(v) for v in kwargs.values()):
            raise error
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, failing)


UNEXPECTED = {
    # A PROJ/GDAL CRS error raised while reprojecting labels, outside _open_raster.
    "crs error outside the raster reader": (components.scenes, "reproject", CRSError("Invalid projection: +proj=x"),
                                            LABELS_FILE, "unexpected rasterio.errors.CRSError: Invalid projection"),
    "memory error while rasterising": (components.scenes, "bin_points", MemoryError("Unable to allocate"),
                                       LAZ_FILE, "unexpected MemoryError: Unable to allocate"),
    "a bug after reading": (components.scene_example_gen, "encode_examples", ZeroDivisionError("division by zero"),
                            "", "unexpected ZeroDivisionError: division by zero"),
}


@pytest.mark.parametrize("module, name, error, file_name, problem", UNEXPECTED.values(), ids=UNEXPECTED.keys())
def test_any_exception_in_a_scene_becomes_its_error(corpus, monkeypatch, caplog, module, name, error, file_name,
                                                    problem):
    root, _ = corpus
    scene_dir = root / span_folder(1) / "good-0"
    _raise_in(monkeypatch, module, name, error)
    with caplog.at_level(logging.ERROR, logger="components.scenes"), pytest.raises(SceneError) as raised:
        ingest_scene(str(scene_dir), CONFIG, str(root))
    err = raised.value
    assert (err.scene, err.path) == ("good-0", str(scene_dir / file_name).rstrip("/"))
    assert err.problem.startswith(problem)
    assert err.__cause__ is error
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.exc_info[1] is error  # the traceback is logged


def test_fail_lists_every_bad_scene_of_the_corpus_and_a_bug(corpus, monkeypatch, tmp_path):
    root, _ = corpus
    _raise_in(monkeypatch, components.scene_example_gen, "tile_patches", KeyError("band"), scene="good-1")
    with pytest.raises(BadScenesError) as failure:
        run_executor(CONFIG, root, tmp_path / "out")
    message = str(failure.value)
    scenes = len(KINDS) + GOOD_COPIES
    assert f"{len(REJECTS) + 1} of {scenes} scenes are bad" in message
    for kind in REJECTS:
        assert f"scene {kind.name}: {root / span_folder(1) / kind.name}" in message
        assert kind.outcome.defect in message
    assert f"scene good-1: {root / span_folder(1) / 'good-1'}: unexpected KeyError: 'band'" in message
    for kept in (*ACCEPTS, "good-0"):
        assert f"scene {getattr(kept, 'name', kept)}:" not in message


def test_skip_keeps_exactly_the_good_scenes_of_the_corpus(corpus, tmp_path):
    root, _ = corpus
    config = CONFIG.replace({"ingest.on_bad_scene": "skip"})
    examples = run_executor(config, root, tmp_path / "out")
    good = {kind.name for kind in ACCEPTS} | {f"good-{i}" for i in range(GOOD_COPIES)}
    report = read_ingest_report(examples.uri)
    assert set(report["scenes"]) == good
    assert sorted(problem.split(":", 1)[0] for problem in report["bad_scenes"]) == sorted(
        f"scene {kind.name}" for kind in REJECTS)
    written = set()
    for split in SPLITS:
        written |= set(read_split(examples.uri, split, config)[SCENE_ID].tolist())
    assert written == {name.encode() for name in good}
    assert np.sum(list(report["patches_per_split"].values())) > 0
