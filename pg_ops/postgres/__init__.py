"""Everything pg_ops says to PostgreSQL: topology, lag, roles, slots, promotion, dumps."""
