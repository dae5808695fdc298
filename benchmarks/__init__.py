"""Benchmarks of the core pipeline (not tests): `python -m benchmarks.quality`, `... -m benchmarks.train_throughput`."""
