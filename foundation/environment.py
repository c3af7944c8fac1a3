"""The process environment TensorFlow must find when it is first imported.

TF 2.16 ships Keras 3, but tf.Transform and TFMA load models with tf_keras; the switch works only if it is set
before TensorFlow loads, so each entry point (the CLI, the TFX module files, the bench and test harnesses) calls
`prepare_tensorflow()` first, and the container image sets the same variables (a test checks the Dockerfile).
"""
from __future__ import annotations

import os
import sys

TENSORFLOW_ENVIRONMENT = {"TF_USE_LEGACY_KERAS": "1"}


def prepare_tensorflow() -> None:
    """Sets the switch; refuses when TensorFlow already loaded without it, since the switch would be ignored."""
    wrong = {name: os.environ.get(name) for name, value in TENSORFLOW_ENVIRONMENT.items()
             if os.environ.get(name) != value}
    if wrong and "tensorflow" in sys.modules:
        raise RuntimeError(f"TensorFlow was imported before terrafuse set {TENSORFLOW_ENVIRONMENT} (found {wrong}): "
                           f"call foundation.environment.prepare_tensorflow() before importing TensorFlow")
    os.environ.update(TENSORFLOW_ENVIRONMENT)
