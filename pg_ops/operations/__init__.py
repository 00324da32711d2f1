"""Operations: plain Python (no Dagster) taking a spec, a platform, a store and a logger."""
