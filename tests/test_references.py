"""Docs, comments and the image's files name only files and modules that exist: a moved module leaves no
stale pointer behind."""
import re
import subprocess

import pytest

from foundation.config import PROJECT_DIR

PACKAGES = ("foundation", "transforms", "schemas", "models", "components", "synth", "pipeline", "bench", "tests",
            "docs")
# `components/scenes.py`, `docs/kubeflow.md`, `bench/`: a path inside the checkout (globs and placeholders aside).
PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(PACKAGES)})/[\w./-]*)")
# `pipeline.dag.create_pipeline`, `foundation.environment`: a dotted module name (checked in prose files only,
# where code cannot mean a variable called `pipeline`).
MODULE = re.compile(rf"(?<![\w./-])((?:{'|'.join(PACKAGES[:-1])})(?:\.[a-z_][a-z0-9_]*)+)")
# `kubeflow.md`: a document, which a reader of the checkout must be able to open.
DOCUMENT = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")
PROSE_SUFFIXES = (".md",)
PROSE_NAMES = ("Dockerfile", "Makefile", ".dockerignore")


def _tracked_text_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.split()
            if name.endswith((".py", *PROSE_SUFFIXES)) or name.rsplit("/", 1)[-1] in PROSE_NAMES]


def _missing_path(reference: str) -> bool:
    path = reference.rstrip(".").rstrip("/")
    if any(mark in path for mark in ("*", "<", "NNNN")):
        return False
    return not (PROJECT_DIR / path).exists()


def _missing_module(reference: str) -> bool:
    """True unless some prefix of at least `package.module` is a module file or a package of the checkout."""
    parts = reference.split(".")
    return not any(PROJECT_DIR.joinpath(*parts[:end]).with_suffix(".py").is_file()
                   or (PROJECT_DIR.joinpath(*parts[:end]) / "__init__.py").is_file()
                   for end in range(2, len(parts) + 1))


@pytest.mark.parametrize("name", _tracked_text_files())
def test_named_files_and_modules_exist(name):
    text = (PROJECT_DIR / name).read_text()
    missing = sorted({ref for ref in PATH.findall(text) if _missing_path(ref)})
    if name.endswith(PROSE_SUFFIXES) or name.rsplit("/", 1)[-1] in PROSE_NAMES:
        missing += sorted({ref for ref in MODULE.findall(text) if _missing_module(ref)})
    documents = {path.rsplit("/", 1)[-1] for path in _tracked_text_files() if path.endswith(".md")}
    missing += sorted(set(DOCUMENT.findall(text)) - documents)
    assert missing == [], f"{name} names what is not in the checkout"


def test_checker_finds_a_stale_reference():
    stale = "no_such_module"  # spelled apart, so that this file names nothing stale itself
    assert _missing_path(f"pipeline/{stale}.py") and not _missing_path("pipeline/dag.py")
    assert _missing_module(f"pipeline.{stale}") and not _missing_module("pipeline.dag.create_pipeline")
