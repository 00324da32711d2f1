"""Shared test support: what more than one test module (or a benchmark) uses lives here, so no
test module imports another (test_layers.py holds that). helpers.py: clusters, specs, ports and
the faults of a node; the others by subject."""
