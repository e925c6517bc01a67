"""Benchmarks (`factory bench ...`): quality on public data (encoder, sid, generative) and performance
on generated data (inference, features, scale, and `all` = perf.py). Results: benchmarks/results/ and
docs/benchmarks.md.

A leaf: nothing in the factory imports it (jobs.cli mounts jobs.bench.cli, which is import-light).
common.py holds what every benchmark shares, including the one JSON writer and its `summary` rows.
"""
