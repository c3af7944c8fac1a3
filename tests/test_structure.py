"""The package layering (README, "Architecture"): every import goes to the same layer or one below, no module
imports itself round a circle, and what the Trainer's reuse fingerprint and the image rely on exists."""
import ast
import re
from pathlib import Path

import pytest

from foundation.config import PROJECT_DIR
from foundation.environment import TENSORFLOW_ENVIRONMENT, prepare_tensorflow
from pipeline.dag import TRAINING_CODE, TRANSFORM_CODE

# Lowest first. Packages of one layer may import each other; nothing imports a layer above its own.
LAYERS = (
    ("foundation",),
    ("transforms",),
    ("schemas",),
    ("models", "components", "synth"),
    ("pipeline",),
    ("bench", "tests"),
)
LAYER_OF = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
# (importing module, imported module): an upward import that is allowed, and why. At most two.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    """Every Python module of the checkout's packages, by dotted name."""
    modules = {}
    for package in LAYER_OF:
        for path in sorted((PROJECT_DIR / package).rglob("*.py")):
            parts = path.relative_to(PROJECT_DIR).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: Path, known: set[str]) -> set[str]:
    """terrafuse modules a file imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def test_imports_go_to_the_same_layer_or_below():
    upward = sorted((importer, imported) for importer, targets in _graph().items() for imported in targets
                    if LAYER_OF[imported.split(".")[0]] > LAYER_OF[importer.split(".")[0]])
    assert len(ALLOWED_UPWARD) <= 2
    assert [pair for pair in upward if pair not in ALLOWED_UPWARD] == []


def test_no_import_circles():
    graph = _graph()
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for imported in sorted(graph[module]):
            if imported in path:
                circles.append(path[path.index(imported):] + [imported])
            elif imported not in done:
                visit(imported, path + [imported])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert circles == []


def test_layer_check_sees_an_upward_import(tmp_path):
    """The checker itself: a lower-layer module importing a higher one is found, even inside a function."""
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from pipeline.dag import create_pipeline\n")
    assert _imports(module, set(_modules())) == {"pipeline.dag"}


@pytest.mark.parametrize("code, entry_modules", [
    (TRAINING_CODE, ["models.trainer", "transforms.preprocessing"]),
    (TRANSFORM_CODE, ["transforms.preprocessing"]),
])
def test_code_fingerprints_cover_existing_code(code, entry_modules):
    """A path that no longer exists would silently drop out of a fingerprint (the Trainer's reuse key, the Transform's
    and Trainer's cache key when named by import path); a module the TFX module files load that lies outside it
    would change their outputs without changing the key."""
    for entry in code:
        path = PROJECT_DIR / entry
        assert path.exists(), f"the fingerprint names {entry}, which is not in the checkout"
        assert path.is_file() or list(path.glob("*.py")), f"{entry} holds no Python file"
    graph, modules = _graph(), _modules()
    loaded, frontier = set(), list(entry_modules)
    while frontier:
        module = frontier.pop()
        if module not in loaded:
            loaded.add(module)
            frontier.extend(graph[module])
    covered = [PROJECT_DIR / entry for entry in code]
    outside = sorted(module for module in loaded
                     if not any(modules[module] == path or path in modules[module].parents for path in covered))
    assert outside == []


def test_image_sets_the_tensorflow_environment():
    """Kubeflow steps run TFX's own entry points in the image: its ENV must set what prepare_tensorflow sets."""
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    env = dict(re.findall(r"\b(TF_\w+)=(\S+)", dockerfile))
    assert {name: env.get(name) for name in TENSORFLOW_ENVIRONMENT} == TENSORFLOW_ENVIRONMENT


def test_no_package_sets_the_environment_on_import():
    for package in LAYER_OF:
        init = PROJECT_DIR / package / "__init__.py"
        if init.exists():
            touched = [node for node in ast.walk(ast.parse(init.read_text()))
                       if isinstance(node, ast.Attribute) and node.attr in ("environ", "putenv")]
            assert touched == [], f"{init} changes the environment on import"


def test_the_switch_is_refused_once_tensorflow_loaded_without_it(monkeypatch):
    """TensorFlow is loaded in this process: a switch set now would be ignored, so it is an error, not a no-op."""
    import tensorflow  # noqa: F401

    (name,) = TENSORFLOW_ENVIRONMENT
    monkeypatch.setenv(name, "0")
    with pytest.raises(RuntimeError, match=f"{name}.*before importing TensorFlow"):
        prepare_tensorflow()
    monkeypatch.setenv(name, TENSORFLOW_ENVIRONMENT[name])
    prepare_tensorflow()
