"""The in-place major upgrade of a Kubernetes cluster's primary (Upgrades.member_upgrade).

pg_upgrade needs both majors' binaries beside the data, so it runs where the data is: in the
primary's own pod, by its member script (member.sh's [upgrade] row), from an image that carries
both majors (deploy/postgres/Dockerfile with OLD_MAJORS; PGOPS_BINS names their folders). pg_ops
drives it through the desired-state record and reads each step from the member's report:

    prepare  the StatefulSet's template must already run the new major (the rendered manifests
             applied: Git, or `pg-ops deploy`); the record names the upgrade (upgrade.id, .to,
             .initdb) — the running old server ignores it, a member reads it when it boots
    check    (the primary's pod was deleted: the operation's stop) its replacement runs, and its
             script reports initdb and `pg_upgrade --check` done
    link     ... and `pg_upgrade --link` done, the new data dir swapped in: its system identifier
    undo     the record's upgrade cleared: the script gives the old major its data dir back and
             starts it (before the go only)
    finish   the record's upgrade cleared after the go

The go is the operation's own step: the record's system identifier set to the upgraded one, and
(`go`) the same written beside the data by an exec, as the record mounted in a running pod lags
the kubelet's sync. The script waits for either and only then starts the new server (the point
of no return).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from pg_ops.platforms.base import MemberReport
from pg_ops.poll import poll
from pg_ops.postgres import upgrade as pgu
from pg_ops.render import names as names
from pg_ops.state import DesiredState, update_state

if TYPE_CHECKING:
    from pg_ops.platforms.kubernetes import KubernetesPlatform

STEP_TIMEOUT_S = 3600.0  # the pod's pg_upgrade --link of a large catalog (as the local platform's)


class PodDataUpgrade:
    """pg_upgrade --link of `member`'s data dir by its member script, in the MemberUpgrade steps."""

    def __init__(self, platform: KubernetesPlatform, member: str, from_major: int, to_major: int):
        self.platform, self.member = platform, member
        self.from_major, self.to_major = from_major, to_major
        self.id = secrets.token_hex(6)
        self.sysid = ""
        self._check_template()

    def _check_template(self) -> None:
        """The live StatefulSet must start members on the new major with the image's majors named
        (pods made from it keep running the old data with its own major until the upgrade)."""
        image, env = self.platform.member_template()
        want = names.pg_bin(self.to_major)
        if env.get("PGOPS_BIN") != want or not env.get("PGOPS_BINS"):
            spec = self.platform.spec
            how = self.platform.how_to_apply() if spec.kubernetes.gitops else f"`pg-ops deploy --cluster {spec.name}`"
            raise pgu.UpgradeRefused(
                f"cluster {spec.name}: its StatefulSet still starts members with "
                f"{env.get('PGOPS_BIN') or 'no PGOPS_BIN'} "
                f"(image {image}), not {want}: apply the manifests rendered for postgres.version {self.to_major} and "
                f"an image with PostgreSQL {self.from_major} and {self.to_major} first ({how}; its pods keep running "
                f"their data's major until the upgrade)")

    def _record(self, **fields: object) -> DesiredState:
        return update_state(self.platform.state_store(), lambda s: s.model_copy(update=fields))

    def prepare(self, initdb_options: list[str]) -> None:
        if any(" " in option for option in initdb_options):  # the record's value is split on spaces
            raise pgu.UpgradeRefused(f"cluster {self.platform.spec.name}: an initdb option with a space "
                                     f"({initdb_options}) cannot be passed to the member script")
        self._record(upgrade_id=self.id, upgrade_to=self.to_major, upgrade_initdb=" ".join(initdb_options))

    def _wait_step(self, wanted: str) -> MemberReport:
        """The member's report once its script reached `wanted` for this upgrade; UpgradeFailed
        with the script's reason when it failed, or the member's when it refused to start."""
        order = ("initdb", "checked", "linked")
        seen = [MemberReport()]

        def reached() -> MemberReport | None:
            report = seen[0] = self.platform.member_report(self.member)
            if report.upgrade_id == self.id:
                step = report.upgrade_step
                if step == "failed":
                    raise pgu.UpgradeFailed(f"member {self.member}: {report.upgrade_reason or 'no reason given'}")
                if step in order and order.index(step) >= order.index(wanted):
                    return report
            if report.refused is not None:
                raise pgu.UpgradeFailed(f"member {self.member} refused to start: {report.refused}")
            return None

        def expired() -> pgu.UpgradeFailed:
            return pgu.UpgradeFailed(f"member {self.member}: upgrade step {wanted} not reached after "
                                     f"{STEP_TIMEOUT_S:g} s (last report: step {seen[0].upgrade_step or 'none'}, "
                                     f"boot {seen[0].boot_action or 'none'})")

        return poll(reached, timeout=STEP_TIMEOUT_S, interval=0.5, expired=expired)

    def check(self) -> None:
        self.platform.start_member(self.member)  # its replacement scheduled and running (or why not)
        self._wait_step("checked")

    def link(self) -> None:
        self.sysid = self._wait_step("linked").upgrade_system_identifier
        if not self.sysid:
            raise pgu.UpgradeFailed(f"member {self.member}: linked, but reported no system identifier")

    def system_identifier(self) -> str:
        return self.sysid

    def go(self) -> None:
        self.platform.upgrade_go(self.member, f"{self.id} {self.sysid}")

    def undo(self) -> None:
        """The record's upgrade cleared before the go: the member script undoes it."""
        self._record(upgrade_id="", upgrade_to=0, upgrade_initdb="")

    finish = undo  # after the go the same clearing only ends it (the script already started the new major)

    def start_old(self, member: str) -> None:
        self.platform.start_member(member)
