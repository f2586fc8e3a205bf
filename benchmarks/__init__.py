"""Benchmarks of issue 8: each probe prints a table of ratios measured in one run.

Run them from the repository root: `.venv/bin/python -m benchmarks.run_all` (= `make bench`)
or one probe, e.g. `.venv/bin/python -m benchmarks.p1_fanout --quick`.
"""
