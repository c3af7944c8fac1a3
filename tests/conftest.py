"""Shared test set-up: tf_keras for TFX (before TensorFlow loads) and quiet TensorFlow logs."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
