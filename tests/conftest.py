"""Shared test set-up: the TensorFlow switch before TensorFlow loads, and quiet TensorFlow logs."""
import os

from foundation.environment import prepare_tensorflow

prepare_tensorflow()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
