"""Dagster wiring only: assets, jobs, checks, schedules, sensors, resources. No SQL and no
subprocess calls here; every module builds Dagster objects from `operations/`."""
