"""Benchmarks of the engine: throughput against Keras and a bare loop, and the
large-vocabulary head's memory and time. Run them with scripts/benchmark.py."""
