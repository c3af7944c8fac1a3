"""Custom TFX components and the plain functions behind them."""
import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
