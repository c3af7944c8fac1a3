"""The fused two-stream CNN and the Trainer run_fn."""
import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
