"""member.sh's environment contract, written once: the PGOPS_* variables it reads.

Both platforms start the same script (pg_ops/platforms/member.sh, whose header says what each
variable means): the local platform as a process (`variables()`), the StatefulSet as its
container's env list (`container_env()`), and the script's tests the same way. Here, in
render/, because the StatefulSet renders it and platforms may import render, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

POD_NAME = {"fieldRef": {"fieldPath": "metadata.name"}}  # a member is its pod on Kubernetes


@dataclass(frozen=True)
class MemberEnv:
    """The required part first; None leaves a variable unset (the script's default applies)."""

    member: str | None  # None: the pod's own name (Kubernetes, one template for every member)
    data: str
    port: int
    state: str
    config_dir: str
    passfile: str
    run_dir: str
    bin: str | None = None
    bins: str | None = None
    listen: str | None = None
    socket_dir: str | None = None
    state_dir: str | None = None
    lock_file: str | None = None
    stop_seconds: int | None = None
    timeline_check_seconds: int | None = None
    checkpoint_seconds: int | None = None
    smart_stop_seconds: int | None = None
    termination_log: str | None = None
    recovery_dir: str | None = None

    def _pairs(self) -> list[tuple[str, str | None]]:
        return [(f"PGOPS_{f.name.upper()}", None if getattr(self, f.name) is None else str(getattr(self, f.name)))
                for f in fields(self)]

    def variables(self) -> dict[str, str]:
        """For a process: every variable that is set."""
        if self.member is None:
            raise ValueError("a member started as a process needs its name")
        return {name: value for name, value in self._pairs() if value is not None}

    def container_env(self) -> list[dict]:
        """For a container: the env list, the member's name from its pod when none is given."""
        env: list[dict] = []
        for name, value in self._pairs():
            if name == "PGOPS_MEMBER" and value is None:
                env.append({"name": name, "valueFrom": POD_NAME})
            elif value is not None:
                env.append({"name": name, "value": value})
        return env
