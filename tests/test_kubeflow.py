"""Kubeflow: the compiled spec, the image it names, the kfp client calls (against tests/fake_kfp_server.py), the
`terrafuse kubeflow` commands, and two runs of the compiled spec by tests/kfp_launcher.py on small scenes (slow)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tensorflow as tf
import yaml
from fake_kfp_server import FakeKfpServer
from tfx.dsl.io import filesystem_registry
from kfp_launcher import EXECUTED, Launcher

from foundation.config import PROJECT_DIR, SPLITS, Config, ConfigError, load_config
from foundation.environment import TENSORFLOW_ENVIRONMENT
from foundation.published import model_versions, read_training_record
from foundation.scene_folder import MULTISPECTRAL_FILE, SPAN_PREFIX, span_folder
from pipeline import cli, kfp_client, kfp_compile
from pipeline.beam_runners import beam_args
from pipeline.component_ids import (BASELINE, DRIFT_GATE, EVALUATOR, PUSHER, SCENE_EXAMPLE_GEN, SCHEMA_GEN, TRAINER,
                                    TRANSFORM)
from pipeline import dag
from pipeline.dag import (PREPROCESSING_FN, RUN_FN, TRAINING_CODE, TRANSFORM_CODE, code_fingerprint, create_pipeline,
                          training_code_fingerprint)
from synth.scenes import generate_sample

RUN_EXECUTOR = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
EXAMPLE_GEN_DRIVER = "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver"
SERVING_VOLUME = "/mnt/models/terrafuse"  # a path only the cluster mounts


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    """A config file for `terrafuse kubeflow ...`, whose spec `terrafuse kubeflow compile` has written."""
    root = tmp_path_factory.mktemp("kubeflow")
    scene = root / "data" / span_folder(1) / "scene-000"
    scene.mkdir(parents=True)
    (scene / MULTISPECTRAL_FILE).write_bytes(b"")
    config = Config().replace({
        "kubeflow.pipeline_root": str(root / "cluster"), "kubeflow.data_root": str(root / "data"),
        "kubeflow.serving_dir": SERVING_VOLUME, "kubeflow.spec_file": str(root / "terrafuse.yaml"),
    })
    config_file = root / "cluster.yaml"
    config_file.write_text(yaml.safe_dump({"kubeflow": config.to_dict()["kubeflow"]}))
    assert cli.main(["kubeflow", "compile", "--config", str(config_file)]) == 0
    assert Path(config.kubeflow.spec_file).is_file()
    return config_file


@pytest.fixture(scope="module")
def config(config_file):
    return load_config(str(config_file))


@pytest.fixture(scope="module")
def spec(config):
    return yaml.safe_load(Path(config.kubeflow.spec_file).read_text())


@pytest.fixture
def server():
    with FakeKfpServer() as fake:
        yield fake


def task_parameter(spec, task, name):
    return spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"][name]["runtimeValue"]["constant"]


def containers(spec):
    return {label: executor["container"] for label, executor in spec["deploymentSpec"]["executors"].items()
            if "container" in executor}


def with_spec(config, tmp_path, change):
    """config pointing at a copy of its compiled spec with `change(spec)` applied."""
    spec = yaml.safe_load(Path(config.kubeflow.spec_file).read_text())
    change(spec)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(spec))
    return config.replace({"kubeflow.spec_file": str(path)})


def closed_port_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


# The compiled spec

def test_spec_is_a_pipeline_spec_2_1_yaml_for_the_one_configured_image(config, spec):
    assert spec["schemaVersion"] == "2.1.0"
    assert spec["pipelineInfo"]["name"] == config.run.pipeline_name
    assert kfp_client.spec_images(spec) == {config.kubeflow.image}
    for container in containers(spec).values():
        assert container["command"] == ["python", "-m", RUN_EXECUTOR]
    (example_gen,) = [c for c in containers(spec).values() if "lifecycle" in c]
    assert example_gen["lifecycle"]["preCacheCheck"]["command"] == ["python", "-m", EXAMPLE_GEN_DRIVER]


def test_cluster_paths_are_baked_in(config, spec):
    paths = kfp_compile.cluster_paths(config)
    assert task_parameter(spec, SCENE_EXAMPLE_GEN, "input_base") == paths.data_root
    assert json.loads(task_parameter(spec, PUSHER, "push_destination")) == {
        "filesystem": {"base_directory": SERVING_VOLUME}}


def test_transform_and_trainer_name_their_code_by_import_path_with_its_fingerprint(config, spec):
    """kubeflow.module_source "image" (the default): no wheel, the functions of the image's project, and the
    code's fingerprint in the parameters, which are KFP's cache key."""
    parameters = spec["root"]["dag"]["tasks"][TRANSFORM]["inputs"]["parameters"]
    assert task_parameter(spec, TRANSFORM, "preprocessing_fn") == PREPROCESSING_FN
    assert task_parameter(spec, TRAINER, "run_fn") == RUN_FN
    for task in (TRANSFORM, TRAINER):
        assert "module_path" not in spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
    assert "module_file" not in parameters
    assert json.loads(task_parameter(spec, TRANSFORM, "custom_config"))["code"] == code_fingerprint(TRANSFORM_CODE)
    schema = str(PROJECT_DIR / "schemas" / "schema.pbtxt")
    assert json.loads(task_parameter(spec, TRAINER, "custom_config"))["code"] == training_code_fingerprint(schema)
    assert not Path(kfp_compile.cluster_paths(config).pipeline_root, "_wheels").exists()


def test_compiling_for_a_bucket_touches_no_storage(config, tmp_path, monkeypatch):
    """A gs:// pipeline root with no credentials (nor network): every access of TFX's file layer to the bucket
    fails at once. By import path the compile succeeds; with the wheel it fails, as every compile did before."""
    registry = filesystem_registry.DEFAULT_FILESYSTEM_REGISTRY
    reached = []

    def refuse_the_bucket(path):
        if str(path).startswith("gs://"):
            reached.append(path)
            raise PermissionError(f"no credentials for {path}")
        return lookup(path)

    lookup = registry.get_filesystem_for_path
    monkeypatch.setattr(registry, "get_filesystem_for_path", refuse_the_bucket)
    bucket = config.replace({"kubeflow.pipeline_root": "gs://terrafuse-test-bucket/root",
                             "kubeflow.data_root": "gs://terrafuse-test-bucket/data",
                             "kubeflow.spec_file": str(tmp_path / "bucket.yaml")})
    spec = yaml.safe_load(kfp_compile.compile_pipeline(bucket).read_text())
    assert reached == []
    assert task_parameter(spec, TRANSFORM, "preprocessing_fn") == PREPROCESSING_FN
    with pytest.raises(PermissionError, match="no credentials for gs://terrafuse-test-bucket/root"):
        kfp_compile.compile_pipeline(bucket.replace({"kubeflow.module_source": "wheel"}))


def test_with_module_source_wheel_the_wheels_are_built_under_the_pipeline_root(config, tmp_path):
    wheel_config = config.replace({"kubeflow.module_source": "wheel",
                                   "kubeflow.pipeline_root": str(tmp_path / "cluster"),
                                   "kubeflow.spec_file": str(tmp_path / "wheel.yaml")})
    spec = yaml.safe_load(kfp_compile.compile_pipeline(wheel_config).read_text())
    for task, module in ((TRANSFORM, "preprocessing"), (TRAINER, "trainer")):
        name, wheel = task_parameter(spec, task, "module_path").split("@")
        assert name == module and wheel.startswith(str(tmp_path / "cluster" / "_wheels") + "/")
        assert Path(wheel).is_file()
    assert "preprocessing_fn" not in spec["root"]["dag"]["tasks"][TRANSFORM]["inputs"]["parameters"]


def test_the_code_fingerprints_follow_the_code_each_step_runs(tmp_path, monkeypatch):
    """A change in foundation/ or transforms/ changes both fingerprints, one in models/ only the Trainer's."""
    for package in ("foundation", "models", "transforms"):
        shutil.copytree(PROJECT_DIR / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(dag, "PROJECT_DIR", tmp_path)

    def fingerprints():
        return code_fingerprint(TRANSFORM_CODE), code_fingerprint(TRAINING_CODE)

    before = fingerprints()
    assert before == fingerprints()
    with (tmp_path / "models" / "trainer.py").open("a") as f:
        f.write("\n# edited\n")
    after_models = fingerprints()
    assert after_models[0] == before[0] and after_models[1] != before[1]
    with (tmp_path / "foundation" / "config.py").open("a") as f:
        f.write("\n# edited\n")
    after_foundation = fingerprints()
    assert after_foundation[0] != before[0] and after_foundation[1] != after_models[1]


# Resources

def executor_container(spec, task):
    component = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    return spec["deploymentSpec"]["executors"][spec["components"][component]["executorLabel"]]["container"]


def test_every_step_gets_its_resources_and_no_gpu_unless_asked(config, spec):
    kubeflow = config.kubeflow
    for task in spec["root"]["dag"]["tasks"]:
        values = kubeflow.resources_of(task)
        assert executor_container(spec, task)["resources"] == {
            "cpuRequest": values["cpu_request"], "cpuLimit": values["cpu_limit"],
            "memoryRequest": values["memory_request_gb"], "memoryLimit": values["memory_limit_gb"]}, task
    assert executor_container(spec, SCENE_EXAMPLE_GEN)["resources"]["cpuLimit"] == kubeflow.cpu_limit
    assert executor_container(spec, TRAINER)["resources"]["memoryLimit"] == 8.0  # the default Trainer entry


def test_step_resources_and_the_trainers_gpu_reach_the_spec(config, tmp_path):
    asked = config.replace({
        "kubeflow.cpu_request": 0.5, "kubeflow.cpu_limit": 0, "kubeflow.memory_limit_gb": 3,
        "kubeflow.step_resources": [{"step": SCENE_EXAMPLE_GEN, "cpu_request": 3, "memory_request_gb": 2.5},
                                    {"step": TRAINER, "memory_request_gb": 12, "memory_limit_gb": 16}],
        "kubeflow.trainer_gpu_count": 2, "kubeflow.trainer_gpu_type": "NVIDIA_TESLA_T4",
        "kubeflow.spec_file": str(tmp_path / "gpu.yaml")})
    spec = yaml.safe_load(kfp_compile.compile_pipeline(asked).read_text())
    # a value of 0 is left out: the cluster's default
    assert executor_container(spec, EVALUATOR)["resources"] == {"cpuRequest": 0.5, "memoryRequest": 2.0,
                                                               "memoryLimit": 3.0}
    assert executor_container(spec, SCENE_EXAMPLE_GEN)["resources"] == {"cpuRequest": 3.0, "memoryRequest": 2.5,
                                                                       "memoryLimit": 3.0}
    assert executor_container(spec, TRAINER)["resources"] == {
        "cpuRequest": 0.5, "memoryRequest": 12.0, "memoryLimit": 16.0,
        "accelerator": {"type": "NVIDIA_TESLA_T4", "count": "2"}}
    with_accelerator = [task for task in spec["root"]["dag"]["tasks"]
                        if "accelerator" in executor_container(spec, task)["resources"]]
    assert with_accelerator == [TRAINER]


def test_resources_for_a_step_the_dag_does_not_have_are_refused(config, tmp_path):
    with pytest.raises(ConfigError, match=r"kubeflow.step_resources names \['Trainr'\], not a step of the DAG: "
                                          r"one of \[.*'Trainer'"):
        kfp_compile.compile_pipeline(config.replace({"kubeflow.step_resources": [{"step": "Trainr", "cpu_limit": 4}],
                                                     "kubeflow.spec_file": str(tmp_path / "typo.yaml")}))


def test_curated_schema_points_into_the_image_and_no_path_of_this_checkout_is_left(spec):
    schema_file = task_parameter(spec, SCHEMA_GEN, "schema_file")
    assert schema_file == f"{kfp_compile.IMAGE_PROJECT_DIR}/schemas/schema.pbtxt"
    assert str(PROJECT_DIR) not in json.dumps(spec)


def test_the_spec_suits_the_open_source_backend(spec):
    """Container steps only (that backend refuses TFX's resolver steps), ExampleGen uncached (that backend skips
    its span-resolving pre-cache check), every other step cached."""
    tasks = spec["root"]["dag"]["tasks"]
    assert all("container" in executor for executor in spec["deploymentSpec"]["executors"].values())
    uncached = {name for name, task in tasks.items() if not task["cachingOptions"].get("enableCache")}
    assert uncached == {SCENE_EXAMPLE_GEN}
    evaluator_inputs = tasks[EVALUATOR]["inputs"]["artifacts"]
    assert evaluator_inputs["baseline_model"]["taskOutputArtifact"]["producerTask"] == BASELINE
    assert task_parameter(spec, DRIFT_GATE, "serving_dir") == SERVING_VOLUME
    assert task_parameter(spec, BASELINE, "serving_dir") == SERVING_VOLUME


def test_every_entry_module_and_executor_class_of_the_spec_imports_outside_the_checkout(spec, tmp_path):
    modules = set()
    classes = set()
    for container in containers(spec).values():
        for entry in (container, container.get("lifecycle", {}).get("preCacheCheck")):
            if entry:
                modules.add(entry["command"][entry["command"].index("-m") + 1])
        classes.add(container["args"][container["args"].index("--executor_class_path") + 1])
    assert len(classes) == len(containers(spec))
    functions = [task_parameter(spec, TRANSFORM, "preprocessing_fn"), task_parameter(spec, TRAINER, "run_fn")]
    check = textwrap.dedent(f"""
        import importlib
        for module in {sorted(modules)!r}:
            importlib.import_module(module)
        for path in {sorted(classes)!r}:
            module, _, name = path.rpartition(".")
            assert isinstance(getattr(importlib.import_module(module), name), type), path
        for path in {functions!r}:
            module, _, name = path.rpartition(".")
            assert callable(getattr(importlib.import_module(module), name)), path
    """)
    env = {**os.environ, **TENSORFLOW_ENVIRONMENT, "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, check=True)


def test_the_beam_runner_settings_reach_every_step_of_the_spec(config, tmp_path):
    flink = config.replace({"run.beam_runner": "flink", "beam.flink_master": "flink-jobmanager.flink:8081",
                            "beam.parallelism": 8, "run.beam_args": ["--max_parallelism=64"],
                            "kubeflow.spec_file": str(tmp_path / "flink.yaml")})
    spec = yaml.safe_load(kfp_compile.compile_pipeline(flink).read_text())
    expected = beam_args(flink)
    assert "--runner=FlinkRunner" in expected and expected[-1] == "--max_parallelism=64"
    for label, container in containers(spec).items():
        assert container["args"][-len(expected):] == expected, label


def test_spec_file_must_be_yaml_and_cluster_paths_must_mean_something_in_a_container(config):
    with pytest.raises(ConfigError, match="must end in .yaml"):
        kfp_compile.compile_pipeline(config.replace({"kubeflow.spec_file": "outputs/kubeflow/terrafuse.json"}))
    with pytest.raises(ConfigError, match="kubeflow.pipeline_root .* 'outputs'"):
        kfp_compile.cluster_paths(config.replace({"kubeflow.pipeline_root": "", "run.pipeline_root": "outputs"}))
    with pytest.raises(ConfigError, match="serving_dir .*POSIX"):
        kfp_compile.cluster_paths(config.replace({"kubeflow.pipeline_root": "gs://bucket/tf",
                                                  "kubeflow.serving_dir": ""}))
    paths = kfp_compile.cluster_paths(config.replace({"kubeflow.pipeline_root": "", "run.pipeline_root": "/srv/tf",
                                                      "kubeflow.serving_dir": ""}))
    assert (paths.pipeline_root, paths.serving_dir) == ("/srv/tf", "/srv/tf/serving")


def test_a_schema_outside_the_project_is_refused(config, tmp_path):
    schema = tmp_path / "schema.pbtxt"
    schema.write_text((PROJECT_DIR / "schemas" / "schema.pbtxt").read_text())
    with pytest.raises(ConfigError, match="outside the project"):
        kfp_compile.compile_pipeline(config.replace({"run.schema_file": str(schema),
                                                     "kubeflow.spec_file": str(tmp_path / "spec.yaml")}))


def test_a_serving_dir_on_an_object_store_is_refused_on_every_runner(config):
    with pytest.raises(ConfigError, match="is a URI: it must be a POSIX path"):
        create_pipeline(config.replace({"run.serving_dir": "gs://bucket/serving"}))


def test_the_training_code_fingerprint_follows_the_schema_and_is_stable(tmp_path):
    schema = PROJECT_DIR / "schemas" / "schema.pbtxt"
    edited = tmp_path / "schema.pbtxt"
    edited.write_text(schema.read_text() + "\n# edited\n")
    assert training_code_fingerprint(str(schema)) == training_code_fingerprint(str(schema))
    assert training_code_fingerprint(str(schema)) != training_code_fingerprint(str(edited))


# The image

def dockerfile_instructions():
    text = (PROJECT_DIR / "Dockerfile").read_text()
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    return [line.split(None, 1) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_installs_the_lock_and_the_project_like_the_makefile_and_runs_as_a_user():
    instructions = dockerfile_instructions()
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    bases = [args.split()[0] for keyword, args in instructions if keyword == "FROM"]
    assert bases[-1] == "python:3.10-slim" and "python:3.10-slim" in bases[:-1]  # the build and the runtime stage
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (PROJECT_DIR / "Makefile").read_text(), re.M)[1]
    assert ["ARG", f"UV_VERSION={makefile_uv}"] in instructions
    locked_beam = re.search(r"^apache-beam==(\S+)$", (PROJECT_DIR / "requirements.lock").read_text(), re.M)[1]
    assert ["ARG", f"BEAM_VERSION={locked_beam}"] in instructions  # the Beam worker boot matches the SDK
    assert ["ENTRYPOINT", '["/opt/apache/beam/boot"]'] in instructions
    # Byte-compiled at build time: the image's user cannot write .pyc files into /opt/venv, so every step would
    # compile TensorFlow and TFX from source on import.
    assert any("uv pip install" in run and "--no-deps" in run and "--compile-bytecode" in run
               and f"-r {kfp_compile.IMAGE_PROJECT_DIR}/requirements.lock" in run for run in runs)
    assert any("uv pip install" in run and "--no-deps" in run and run.rstrip().split("&&")[0].rstrip()
               .endswith(kfp_compile.IMAGE_PROJECT_DIR) for run in runs)
    assert ["COPY", f". {kfp_compile.IMAGE_PROJECT_DIR}"] in instructions
    users = [args.strip() for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    ignored = (PROJECT_DIR / ".dockerignore").read_text().split()
    assert {".venv", "outputs", "data"} <= set(ignored) and "schemas" not in ignored


def test_the_gpu_build_argument_adds_cuda_only_when_asked():
    """The `TENSORFLOW` build argument's RUN, run by sh as Docker runs it: the default cpu build does nothing, gpu
    installs tensorflow's `and-cuda` extra (here /opt/venv/bin/uv does not exist, so it fails on calling it)."""
    instructions = dockerfile_instructions()
    assert ["ARG", "TENSORFLOW=cpu"] in instructions
    (run,) = [args for keyword, args in instructions if keyword == "RUN" and "$TENSORFLOW" in args]
    assert '--constraint /opt/terrafuse/requirements.lock "tensorflow[and-cuda]"' in run

    def build(value):
        return subprocess.run(["sh", "-c", run], env={"PATH": "/usr/bin:/bin", "TENSORFLOW": value},
                              capture_output=True, text=True)

    cpu = build("cpu")
    assert (cpu.returncode, cpu.stdout, cpu.stderr) == (0, "", "")
    gpu = build("gpu")
    assert gpu.returncode != 0 and "/opt/venv/bin/uv" in gpu.stderr
    other = build("cuda")
    assert other.returncode == 1 and "TENSORFLOW must be cpu or gpu, got 'cuda'" in other.stderr


# Checks made before anything is sent

def test_malformed_crons_are_refused_with_what_a_kfp_cron_is():
    assert kfp_client.validate_cron("0 0 3 * * *") == "0 0 3 * * *"
    assert kfp_client.validate_cron("0 */15 8-18 ? JAN-MAR MON-FRI") == "0 */15 8-18 ? JAN-MAR MON-FRI"
    for bad, reason in [("0 3 * * *", "5 fields .*prepend '0 '"), ("0 0 24 * * *", "hour field '24'"),
                        ("0 0 3 * * 7", "day of week"), ("0 0 3 ? * *", None), ("0 0/0 3 * * *", "step"),
                        ("0 0 5-3 * * *", "backwards"), ("? 0 3 * * *", "only fits the day")]:
        if reason is None:
            assert kfp_client.validate_cron(bad)
            continue
        with pytest.raises(ConfigError, match=reason) as raised:
            kfp_client.validate_cron(bad)
        assert "six fields, seconds first" in str(raised.value)


def test_nothing_is_sent_for_a_bad_cron_another_image_or_a_data_root_without_spans(config, server, tmp_path):
    with pytest.raises(ConfigError, match="six fields"):
        kfp_client.schedule(config, server.url, cron="0 3 * * *")
    with pytest.raises(kfp_client.KubeflowError, match="compiled for image terrafuse:0.1.0 but kubeflow.image is "
                                                     "registry.example.com/terrafuse:0.2.0"):
        kfp_client.submit(config.replace({"kubeflow.image": "registry.example.com/terrafuse:0.2.0"}), server.url)
    empty = tmp_path / "empty"
    empty.mkdir()
    no_spans = with_spec(config, tmp_path, lambda spec: spec["root"]["dag"]["tasks"][SCENE_EXAMPLE_GEN]["inputs"]
                         ["parameters"]["input_base"]["runtimeValue"].update(constant=str(empty)))
    with pytest.raises(kfp_client.KubeflowError, match=f"no span .*{re.escape(f'{empty}/{SPAN_PREFIX}*/*/*')}"):
        kfp_client.schedule(no_spans, server.url)
    assert server.requests == []


def test_the_span_check_reads_uris_through_tf_io_gfile(config, spec):
    data_root = "ram://terrafuse-test/data"
    spec = json.loads(json.dumps(spec))
    spec["root"]["dag"]["tasks"][SCENE_EXAMPLE_GEN]["inputs"]["parameters"]["input_base"]["runtimeValue"][
        "constant"] = data_root
    with pytest.raises(kfp_client.KubeflowError, match="no span"):
        kfp_client.check_spec(config, spec)
    with tf.io.gfile.GFile(f"{data_root}/{span_folder(3)}/scene-000/{MULTISPECTRAL_FILE}", "wb") as f:
        f.write(b"")
    kfp_client.check_spec(config, spec)


def test_an_unreachable_host_is_named_at_once(config):
    host = closed_port_url()
    with pytest.raises(kfp_client.KubeflowError, match=f"cannot reach Kubeflow Pipelines at {host}"):
        kfp_client.submit(config, host)
    with pytest.raises(kfp_client.KubeflowError, match="no Kubeflow Pipelines host"):
        kfp_client.submit(config.replace({"kubeflow.host": ""}))


# The kfp client against the fake server

def test_submit_sends_the_compiled_spec_with_the_pipeline_root_into_a_new_experiment(config, spec, server):
    run_id = kfp_client.submit(config, server.url, client_options={"existing_token": "token-123"})
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", "/apis/v2beta1/healthz"), ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"), ("POST", "/apis/v2beta1/runs")]
    (created,) = server.calls("POST", "/runs")
    (experiment,) = server.experiments.values()
    assert experiment["display_name"] == config.kubeflow.experiment
    assert created.body["experiment_id"] == experiment["experiment_id"]
    assert created.body["pipeline_spec"] == spec
    assert created.body["runtime_config"]["pipeline_root"] == config.kubeflow.pipeline_root
    assert created.headers["authorization"] == "Bearer token-123"
    assert "token-123" not in json.dumps(created.body)
    assert run_id


def test_schedule_sends_a_cron_trigger_one_at_a_time_without_catch_up(config, spec, server):
    first = kfp_client.schedule(config, server.url, cron="0 30 2 * * *")
    second = kfp_client.schedule(config, server.url)
    assert len(server.calls("POST", "/experiments")) == 1  # the experiment is made once, then found
    bodies = [r.body for r in server.calls("POST", "/recurringruns")]
    assert [b["trigger"] for b in bodies] == [{"cron_schedule": {"cron": "0 30 2 * * *"}},
                                             {"cron_schedule": {"cron": config.kubeflow.cron}}]
    for body in bodies:
        assert (body["max_concurrency"], body["no_catchup"], body["mode"]) == (1, True, "ENABLE")
        assert body["pipeline_spec"] == spec
        assert body["runtime_config"]["pipeline_root"] == config.kubeflow.pipeline_root
    assert [s.recurring_run_id for s in kfp_client.list_schedules(config, server.url)] == [first, second]
    kfp_client.disable_schedule(config, server.url, first)
    assert server.calls("POST", f"/recurringruns/{first}:disable")
    assert {s.recurring_run_id: s.enabled for s in kfp_client.list_schedules(config, server.url)} == {
        first: False, second: True}


def test_server_errors_surface_with_status_and_the_servers_message(config, server):
    server.fail("POST", "/runs", 500, "failed to compile the workflow: resolver executor not implemented")
    with pytest.raises(kfp_client.KubeflowError, match="refused starting the run: HTTP 500 Internal Server Error: "
                                                     "failed to compile the workflow: resolver executor"):
        kfp_client.submit(config, server.url)
    server.fail("POST", "/recurringruns", 400, "Invalid input error: the cron is not valid")
    with pytest.raises(kfp_client.KubeflowError, match="HTTP 400 Bad Request: Invalid input error: the cron"):
        kfp_client.schedule(config, server.url)
    with pytest.raises(kfp_client.KubeflowError, match="HTTP 404 .*recurring run nope not found"):
        kfp_client.disable_schedule(config, server.url, "nope")


def test_cli_schedules_lists_and_disables(config_file, server, capsys):
    def terrafuse(*argv):
        return cli.main(["kubeflow", *argv, "--config", str(config_file)])

    assert terrafuse("schedule", "--host", server.url, "--cron", "0 0 4 * * *") == 0
    (recurring_run_id,) = server.recurring_runs
    assert terrafuse("schedule", "--host", server.url, "--list") == 0
    assert terrafuse("schedule", "--host", server.url, "--disable", recurring_run_id) == 0
    out = capsys.readouterr().out
    assert f"{recurring_run_id}  enabled   0 0 4 * * *" in out and f"{recurring_run_id} disabled" in out
    assert terrafuse("submit", "--host", closed_port_url()) == 2
    assert "error: cannot reach Kubeflow Pipelines" in capsys.readouterr().err


# The compiled spec, executed

@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    root = tmp_path_factory.mktemp("launched")
    # Scenes of the default size: smaller ones leave too few test patches of water for the gate.
    generate_sample(root / "data", Config(), spans=2, scenes_per_span=3, seed=1)
    config = Config().replace({
        # 3 epochs failed the gate once in clean-clone CI (2026-12-02): training is not reproducible run to run
        # (docs/benchmarks.md), and a test of the compiled spec must not hang on a coin toss at the recall floors.
        "model.epochs": 12,
        "run.data_root": str(root / "data"), "run.pipeline_root": str(root / "pipeline"),
        "kubeflow.spec_file": str(root / "terrafuse.yaml"),
    })
    spec_file = kfp_compile.compile_pipeline(config)
    launcher = Launcher(spec_file, config.run.pipeline_root)
    return config, launcher, launcher.run()


@pytest.mark.slow
def test_the_compiled_spec_runs_blesses_and_pushes(launched):
    config, _, result = launched
    assert result.ok, result.tasks[result.failed_task].log[-4000:]
    print(f"\nlauncher run: {result.seconds:.0f} s")
    assert set(result.states().values()) == {EXECUTED}
    (examples,) = result.outputs[SCENE_EXAMPLE_GEN]["examples"]
    # No pre-cache check ran: the executor itself took the newest span and fingerprinted its 3 scenes x 3 files.
    assert "Resolved the newest span: 2" in result.tasks[SCENE_EXAMPLE_GEN].log
    assert examples["metadata"]["input_fingerprint"].startswith("split:scenes,num_files:9,")
    assert json.loads(examples["metadata"]["split_names"]) == list(SPLITS)
    assert "nothing published" in result.tasks[BASELINE].log
    (blessing,) = result.outputs[EVALUATOR]["blessing"]
    assert blessing["metadata"]["blessed"] == 1
    assert len(model_versions(config.serving_dir)) == 1


@pytest.mark.slow
def test_a_run_without_a_new_span_trains_nothing_and_pushes_nothing_new(launched):
    config, launcher, first = launched
    assert first.ok
    (version,) = model_versions(config.serving_dir)
    again = launcher.run()
    print(f"\nlauncher rerun: {again.seconds:.0f} s, {again.states()}")
    assert again.ok, again.tasks[again.failed_task].log[-4000:]
    (examples,) = again.outputs[SCENE_EXAMPLE_GEN]["examples"]
    assert examples["metadata"]["input_fingerprint"] == first.outputs[SCENE_EXAMPLE_GEN]["examples"][0]["metadata"][
        "input_fingerprint"]
    trainer_log = again.tasks[TRAINER].log
    assert "nothing is trained" in trainer_log and "Epoch 1/" not in trainer_log
    (model,) = again.outputs[TRAINER]["model"]
    published = os.path.join(config.serving_dir, version)
    assert read_training_record(os.path.join(model["uri"], "Format-Serving")) == read_training_record(published)
    assert f"published version {published}" in again.tasks[BASELINE].log
    assert model_versions(config.serving_dir) == [version]
