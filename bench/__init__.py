"""Benchmarks of the targets in docs/performance.md: each script starts its own processes on 127.0.0.1
and prints JSON + a ratio line.

Run them all with ``make bench`` (``python -m bench.all``), or one at a time (``python -m bench.proxy``).
They are measurements, not tests: nothing here is collected by pytest.
"""
