"""Synthetic sample scenes (multispectral GeoTIFF, LiDAR LAZ, labels) for tests and `make run`: no downloads."""
from synth.scenes import generate_sample

__all__ = ["generate_sample"]
