"""Benchmarks: pgbench against PostgreSQL directly, through pgbouncer and through pgwarden, in one run.

`python -m bench --help` runs it; `docs/benchmarks.md` explains how to read the numbers.
"""
