"""`make bench`: throughput and latency of the served champion, measured the same way every time.

Not a test: it measures, writes bench/RESULTS.md and judges the targets, but a missed target does
not fail it. Run with `make bench` (BENCH_DURATION=10 by default).
"""
