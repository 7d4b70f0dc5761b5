"""Benchmarks for opsbot: timing targets reported as figures (a table and bench/results/<name>.json).

Run from the repository root: `python -m bench [NAME ...] [options]` (see `python -m bench --help`).
Each benchmark starts the services it needs (tests/support/) and kills them
again, even on error or Ctrl-C. Targets are reported, never asserted: the exit status says whether
the benchmark ran, not whether a target was met.
"""
