"""The fused two-stream CNN and the Trainer run_fn."""
