"""Two PostgreSQL majors in the tests: the 16 binaries of the pgserver wheel, and the images of an
upgrade in place on Kubernetes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

OLD_IMAGE = "registry.example/pg-ops-postgres:16"
NEW_IMAGE = "registry.example/pg-ops-postgres:18-from-16"  # deploy/postgres/Dockerfile, OLD_MAJORS=16


def pg16_bin() -> Path | None:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    return path if (path / "postgres").is_file() else None
