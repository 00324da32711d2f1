"""The alert as a value: its one JSON shape (docs/architecture/interfaces.md "Alerts"), its
severity and the key that makes one open alert per cluster, kind and member. Pure, so the HA
decisions (ha/decide.py) can name the alerts they raise; how alerts leave pg_ops (de-duplication,
scrubbing, webhook, Alertmanager) is operations/alerts.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Severity = Literal["critical", "warning", "info"]


class Alert(BaseModel):
    """The alert shape of docs/architecture/interfaces.md; `details` may carry `member` (its subject)."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    severity: Severity
    kind: str
    summary: str
    details: dict = {}
    fired_at: float | None = None
    resolved_at: float | None = None

    @property
    def key(self) -> str:
        """One open alert per cluster, kind and member."""
        return f"{self.cluster}/{self.kind}/{self.details.get('member', '')}"

    @property
    def resolved(self) -> bool:
        return self.resolved_at is not None


def condition_key(cluster: str, kind: str, member: str | None = None) -> str:
    return f"{cluster}/{kind}/{member or ''}"
