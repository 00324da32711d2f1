"""pg_ops: a Dagster code location that operates PostgreSQL clusters."""

__version__ = "0.1.0"
