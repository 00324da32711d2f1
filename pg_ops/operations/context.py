"""What every operation needs about a cluster: spec, platform, credentials, its backup store,
a logger, and how its alerts leave."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pg_ops.credentials import SUPERUSER, Credentials
from pg_ops.errors import PgOpsError
from pg_ops.operations.alerts import AlertDelivery
from pg_ops.platforms import platform_for
from pg_ops.platforms.base import Platform
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.postgres.topology import MemberProbe, probe_members
from pg_ops.spec import ClusterSpec
from pg_ops.state import DesiredState
from pg_ops.stores import BackupStore, copy_store_for, store_for


@dataclass
class ClusterContext:
    spec: ClusterSpec
    platform: Platform
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("pg_ops"))
    alerts: AlertDelivery = field(default_factory=AlertDelivery)  # Dagster's AlertsResource sets it

    @classmethod
    def for_spec(cls, spec: ClusterSpec, log: logging.Logger | None = None,
                 alerts: AlertDelivery | None = None) -> ClusterContext:
        return cls(spec, platform_for(spec), log or logging.getLogger("pg_ops"), alerts or AlertDelivery())

    @property
    def name(self) -> str:
        return self.spec.name

    def credentials(self) -> Credentials:
        creds = self.platform.load_credentials()
        if creds is None:
            raise PgOpsError(f"cluster {self.name}: no credentials yet (run `pg-ops deploy --cluster {self.name}`)")
        return creds

    def store(self) -> BackupStore:
        """The cluster's backup store; S3 keys come from the env vars the spec names, the
        platform's secret (`credentials_secret`), or boto3's default chain."""
        return store_for(self.spec, secret_provider=self.platform.s3_credentials)

    def copy_store(self) -> BackupStore:
        """The second store of `backups.copy_to` (StoreError when there is none)."""
        return copy_store_for(self.spec, secret_provider=self.platform.s3_credentials)

    def store_from(self, where: str) -> BackupStore:
        """"primary" (backups.store) or "copy" (backups.copy_to): where a drill or a listing reads."""
        if where not in ("primary", "copy"):
            raise PgOpsError(f"backup store {where!r}: primary or copy")
        return self.copy_store() if where == "copy" else self.store()

    def admin_password(self) -> str:
        return self.credentials().password(SUPERUSER)

    def state(self) -> DesiredState:
        state = self.platform.state_store().read()
        if state is None:
            raise PgOpsError(f"cluster {self.name} is not deployed (no desired-state record)")
        return state

    def endpoints(self) -> dict[str, Endpoint]:
        return self.platform.member_endpoints()

    def probe(self, names: list[str] | None = None, timeout: float | None = None,
              deadlines: dict[str, float] | None = None) -> dict[str, MemberProbe]:
        endpoints = self.endpoints()
        wanted = {n: endpoints[n] for n in (names or endpoints)}
        return probe_members(wanted, SUPERUSER, self.admin_password(),
                             timeout or self.spec.monitoring.probe_timeout_seconds, deadlines)
