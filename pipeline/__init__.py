"""Configuration, the DAG, runners and the CLI of terrafuse.

TF 2.16 ships Keras 3, but tf.Transform and TFMA load models with tf_keras; the switch only takes effect
if it is set before TensorFlow is first imported, so every terrafuse package sets it on import.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
