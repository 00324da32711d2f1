"""Benchmarks (`make bench`): plain scripts named bench_*.py, never collected by pytest.
Each prints one JSON line per result, with its figure and a baseline measured in the same
run, and appends it to bench-results/<name>.jsonl."""
