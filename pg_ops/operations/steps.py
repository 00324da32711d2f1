"""Timed, logged steps: every topology change logs each step with its duration and keeps
them for its result (a result's `steps`: step name -> seconds, in order; pg_ops/defs/metadata.py
shows them as one value of the run's metadata). Given the cluster's context, each step reads the
platform once (a `ClusterContext.session`) and the next step reads it again: a step that
promotes, fences or restarts a pod never leaves its endpoints to the next (see
operations/context.py)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pg_ops.operations.context import ClusterContext


class StepLog:
    def __init__(self, log: logging.Logger, operation: str, ctx: ClusterContext | None = None):
        self.log = log
        self.operation = operation
        self.ctx = ctx  # each step one session of it
        # Run before each step: a topology change sets its lock's check here, so a run that lost
        # the lock stops at the next step boundary instead of acting on a cluster it no longer owns.
        self.guard: Callable[[], None] | None = None
        self.steps: list[tuple[str, float]] = []
        self.spans: list[tuple[str, float, float]] = []  # (name, monotonic start, end): what a WriteProbe is cut by
        self.started = time.monotonic()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            with self._session():
                if self.guard is not None:
                    self.guard()
                yield
        except Exception as exc:
            took = time.monotonic() - t0
            self.steps.append((f"{name} (failed)", took))
            self.spans.append((f"{name} (failed)", t0, t0 + took))
            self.log.error("%s: %s failed after %.3f s: %s", self.operation, name, took, exc)
            raise
        took = time.monotonic() - t0
        self.steps.append((name, took))
        self.spans.append((name, t0, t0 + took))
        self.log.info("%s: %s (%.3f s)", self.operation, name, took)

    def timings(self) -> dict[str, float]:
        """Step name -> seconds, in the order they ran (a failed step's name ends in "(failed)")."""
        return {name: round(seconds, 4) for name, seconds in self.steps}

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        """The step's reading of the platform; inside an outer session (a caller's), that one,
        forgotten when the step ends so the next step reads again."""
        if self.ctx is None:
            yield
            return
        with self.ctx.session():
            try:
                yield
            finally:
                self.ctx.session_forget()

    def as_metadata(self) -> dict[str, float]:
        """The timings as "step: <name>" keys: the upgrade results' spelling (operations/upgrade.py,
        blue_green.py); the topology changes and the rollout keep `timings()`."""
        return {f"step: {name}": seconds for name, seconds in self.timings().items()}

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started
