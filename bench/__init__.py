"""Benchmark harness of terrafuse: ingestion speed, pipeline time and memory, ablations, scaling, a no-TFX floor.

`python -m bench.run` (or `make bench`) writes bench/results.md, bench/results.json and the plots beside them.
"""
