"""Run every benchmark script (or those named on the command line): python -m pg_ops_tests.benchmarks"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(argv: list[str]) -> int:
    wanted = set(argv)
    scripts = sorted(p for p in HERE.glob("bench_*.py") if not wanted or p.stem in wanted or p.stem[6:] in wanted)
    failed = []
    for script in scripts:
        print(f"== {script.stem}", file=sys.stderr, flush=True)
        rc = subprocess.call([sys.executable, "-m", f"pg_ops_tests.benchmarks.{script.stem}"])
        if rc != 0:
            failed.append(script.stem)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
