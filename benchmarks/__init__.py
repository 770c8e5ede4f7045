"""Benchmark suite for ccdwatch against the tools users would pick instead (issue 7).

Run with ``make bench`` or ``.venv/bin/python -m benchmarks --size 2k``. Not part of the unit
tests. See ``benchmarks/README.md`` for what is measured and the latest figures.
"""
