"""Benchmarks of agentexec against raw Celery, raw Flask and raw Redis, side by side.

Run with `make bench` (short) or `make bench-full`. Every figure is measured in the same
run as its baseline, on the same services with the same pool and concurrency, and is
reported as a ratio. Nothing here runs in the test suite.
"""
