"""Custom TFX components and the plain functions behind them."""
