"""What every benchmark shares: the result line format and where results go."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from pg_ops.settings import REPO_ROOT

RESULTS = Path(os.environ.get("PG_OPS_BENCH_RESULTS", REPO_ROOT / "bench-results"))


def emit(bench: str, result: dict) -> dict:
    """Print one JSON line and append it to bench-results/<bench>.jsonl."""
    line = {"bench": bench, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(), "cores": os.cpu_count(), **result}
    text = json.dumps(line, sort_keys=False)
    print(text, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{bench}.jsonl", "a") as fh:
        fh.write(text + "\n")
    return line


def summary(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 4), "max": round(max(values), 4),
            "min": round(min(values), 4)}
