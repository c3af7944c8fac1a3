# The one image every step of the compiled Kubeflow pipeline runs in (kubeflow.image), and the Beam worker image
# when a data step runs on Dataflow, Flink or Spark (--sdk_container_image):
#   docker build -t terrafuse:0.1.0 .
#   docker build --build-arg TENSORFLOW=gpu -t terrafuse:0.1.0-gpu .    # with the CUDA libraries (see below)
# The spec's steps call `python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor` and, for the
# scene ExampleGen's pre-cache check, `python -m tfx.orchestration.kubeflow.v2.file_based_example_gen.driver`;
# both come with the locked tfx. The project sits at /opt/terrafuse (pipeline/kfp_compile.py, IMAGE_PROJECT_DIR),
# where the compiled spec expects the curated schema.

# Beam's worker boot program, from the SDK image of the locked apache-beam version.
ARG BEAM_VERSION=2.74.0
FROM apache/beam_python3.10_sdk:${BEAM_VERSION} AS beam

# Build stage: five locked packages build from source (kfp, kfp-server-api, google-apitools, pyfarmhash,
# rouge-score) and need a compiler the runtime image does not.
FROM python:3.10-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ \
    && rm -rf /var/lib/apt/lists/*
# Same installer as the Makefile: uv at a pinned version, the lock file without resolving again.
ARG UV_VERSION=0.13.9
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --disable-pip-version-check uv==${UV_VERSION}
COPY requirements.lock /opt/terrafuse/requirements.lock
# Byte-compiled now: the runtime user cannot write .pyc files into /opt/venv, and without them every step would
# compile TensorFlow and TFX from source on import (about 3x slower imports, measured on the development machines).
RUN /opt/venv/bin/uv pip install --python /opt/venv/bin/python --no-deps --compile-bytecode \
        -r /opt/terrafuse/requirements.lock
# GPU TensorFlow for a Trainer given GPUs (kubeflow.trainer_gpu_count): `--build-arg TENSORFLOW=gpu` adds the CUDA
# libraries of the locked tensorflow's `and-cuda` extra (tensorflow pins them exactly; its libraries find them
# through their RUNPATH), the lock constraining everything else. The default, cpu, installs nothing more.
ARG TENSORFLOW=cpu
RUN case "$TENSORFLOW" in \
        cpu) ;; \
        gpu) /opt/venv/bin/uv pip install --python /opt/venv/bin/python --compile-bytecode \
                 --constraint /opt/terrafuse/requirements.lock "tensorflow[and-cuda]" ;; \
        *) echo "TENSORFLOW must be cpu or gpu, got '$TENSORFLOW'" >&2; exit 1 ;; \
    esac
COPY . /opt/terrafuse
RUN /opt/venv/bin/uv pip install --python /opt/venv/bin/python --no-deps --no-build-isolation -e /opt/terrafuse \
    && /opt/venv/bin/pip uninstall --yes uv

FROM python:3.10-slim
# tf.Transform and TFMA load models with tf_keras: the switch must be set before TensorFlow is first imported.
ENV TF_USE_LEGACY_KERAS=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/terrafuse /opt/terrafuse
COPY --from=beam /opt/apache/beam /opt/apache/beam
# TFX pip-installs the Transform and Trainer user-code wheels into temporary folders at run time: a plain user
# with a home directory is enough for that.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin terrafuse
USER terrafuse
WORKDIR /home/terrafuse
# Beam workers start here; Kubeflow steps name their own command, which replaces the entrypoint.
ENTRYPOINT ["/opt/apache/beam/boot"]
