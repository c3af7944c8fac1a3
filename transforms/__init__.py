"""tf.Transform preprocessing and the feature spec, the one home of feature names and shapes."""
import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
