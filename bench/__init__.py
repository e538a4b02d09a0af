"""Benchmarks: each ``python -m bench.<name>`` prints a table and writes ``bench/results/<name>.json``.

Speed and memory targets are measured here, never in timed unit tests (see docs/benchmarks.md).
"""
