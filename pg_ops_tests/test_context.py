"""ClusterContext's session: one reading of the platform per tick or step (operations/context.py).
Pure: a counting fake platform, and the connection functions replaced by recorders."""

import contextlib
import threading
from collections import Counter

import pytest
from pydantic import SecretStr

from pg_ops.credentials import SUPERUSER, Credentials
from pg_ops.operations import context as context_module
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.steps import StepLog
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.postgres.session import MemberUnreachable
from pg_ops.postgres.topology import MemberProbe
from pg_ops.spec import ClusterSpec


class CountingPlatform:
    """Answers member_endpoints / load_credentials / peer_addresses, counting each call."""

    def __init__(self, members: list[str]):
        self.calls: Counter[str] = Counter()
        self.endpoints = {m: Endpoint(f"10.0.0.{i + 1}", 5432) for i, m in enumerate(members)}

    def member_endpoints(self) -> dict[str, Endpoint]:
        self.calls["member_endpoints"] += 1
        return dict(self.endpoints)

    def load_credentials(self) -> Credentials:
        self.calls["load_credentials"] += 1
        return Credentials(passwords={SUPERUSER: SecretStr("secret")})

    def peer_addresses(self) -> dict[str, str]:
        self.calls["peer_addresses"] += 1
        return {m: f"{m}.peers:5432" for m in self.endpoints}

    def primary_dsn(self, user: str, dbname: str) -> str:
        return f"host=primary user={user} dbname={dbname}"


@pytest.fixture
def world(monkeypatch):
    """A context over the counting platform; SQL and probes answered by recorders: a member
    whose endpoint is in `down` does not answer."""
    spec = ClusterSpec(name="ctx", postgres={"members": 3})
    platform = CountingPlatform(spec.member_names)
    ctx = ClusterContext(spec, platform)  # type: ignore[arg-type]
    down: set[Endpoint] = set()
    reached: list[tuple[str, Endpoint, str]] = []

    def with_connection(endpoint, user, password, fn, **kw):
        if endpoint in down:
            raise MemberUnreachable(f"{kw.get('name')}: connection refused")
        reached.append((kw.get("name"), endpoint, password))
        return fn(None)

    def probe_members(members, user, password, timeout, deadlines=None):
        return {n: MemberProbe(name=n, host=ep.host, port=ep.port, reachable=ep not in down)
                for n, ep in members.items()}

    monkeypatch.setattr(context_module, "with_connection", with_connection)
    monkeypatch.setattr(context_module, "probe_members", probe_members)
    return ctx, platform, down, reached


def test_a_session_reads_endpoints_and_credentials_once_however_many_calls_it_serves(world):
    ctx, platform, _, reached = world
    with ctx.session():
        for _ in range(5):
            for member in ctx.spec.member_names:
                assert ctx.sql(member, lambda conn: 1) == 1
            assert all(p.reachable for p in ctx.probe().values())
        ctx.peer_addresses()
        ctx.peer_addresses()
    assert platform.calls == {"member_endpoints": 1, "load_credentials": 1, "peer_addresses": 1}
    assert len(reached) == 15 and {password for _, _, password in reached} == {"secret"}


def test_outside_a_session_every_call_reads_the_platform(world):
    ctx, platform, _, _ = world
    for member in ctx.spec.member_names:
        ctx.sql(member, lambda conn: None)
    ctx.probe()
    ctx.peer_addresses()
    assert platform.calls == {"member_endpoints": 4, "load_credentials": 4, "peer_addresses": 1}


def test_sessions_off_is_the_old_behaviour(world):
    ctx, platform, _, _ = world
    ctx.sessions = False
    with ctx.session():
        ctx.sql(ctx.spec.member_names[0], lambda conn: None)
        ctx.probe()
    assert platform.calls == {"member_endpoints": 2, "load_credentials": 2}


def test_nested_sessions_share_the_outer_reading_and_forget_reads_again(world):
    ctx, platform, _, _ = world
    with ctx.session():
        ctx.probe()
        with ctx.session():
            ctx.probe()
        ctx.probe()
        assert platform.calls["member_endpoints"] == 1
        ctx.session_forget()
        ctx.probe()
        assert platform.calls["member_endpoints"] == 2
    ctx.probe()
    assert platform.calls["member_endpoints"] == 3


def test_each_step_reads_once_and_the_next_step_reads_again_even_inside_an_outer_session(world):
    ctx, platform, _, _ = world
    steps = StepLog(ctx.log, "test", ctx)
    for outer in (False, True):
        platform.calls.clear()
        with ctx.session() if outer else contextlib.nullcontext():
            for name in ("promote", "repoint", "route"):
                with steps.step(name):
                    ctx.probe()
                    ctx.sql(ctx.spec.member_names[0], lambda conn: None)
        assert platform.calls == {"member_endpoints": 3, "load_credentials": 3}


def test_a_member_silent_at_its_memoised_endpoint_is_read_again_and_probed_where_it_moved(world):
    """Safety: "unreachable" is never a verdict on a stale address (a pod recreated elsewhere)."""
    ctx, platform, down, reached = world
    member = ctx.spec.member_names[0]
    with ctx.session():
        assert ctx.probe()[member].reachable
        old = platform.endpoints[member]
        down.add(old)
        platform.endpoints[member] = Endpoint("10.0.9.9", 5432)  # its pod came back at a new IP
        probe = ctx.probe([member])[member]
        assert probe.reachable and probe.host == "10.0.9.9"
        assert platform.calls["member_endpoints"] == 2
        assert ctx.sql(member, lambda conn: "here") == "here"  # the session now holds the new endpoint
        assert reached[-1][1] == Endpoint("10.0.9.9", 5432)
        # A member that is down where it is stays down, and is not read again for every SQL retry.
        down.add(platform.endpoints[member])
        for _ in range(3):
            with pytest.raises(MemberUnreachable):
                ctx.sql(member, lambda conn: None)
        assert platform.calls["member_endpoints"] == 3
        # A probe decides: it reads again on every silence.
        assert not ctx.probe([member])[member].reachable
        assert platform.calls["member_endpoints"] == 4


def test_sql_retries_at_a_moved_endpoint_once(world):
    ctx, platform, down, reached = world
    member = ctx.spec.member_names[1]
    with ctx.session():
        ctx.endpoints()
        down.add(platform.endpoints[member])
        platform.endpoints[member] = Endpoint("10.0.8.8", 5432)
        assert ctx.sql(member, lambda conn: "moved") == "moved"
        assert reached[-1][:2] == (member, Endpoint("10.0.8.8", 5432))


def test_a_session_is_the_opening_threads_own(world):
    """A helper thread (the lease renewer) reads the platform as before."""
    ctx, platform, _, _ = world
    with ctx.session():
        ctx.probe()
        thread = threading.Thread(target=lambda: ctx.sql(ctx.spec.member_names[0], lambda conn: None))
        thread.start()
        thread.join()
        ctx.probe()
    assert platform.calls == {"member_endpoints": 2, "load_credentials": 2}


def test_on_primary_endpoint_uses_the_platform_dsn_and_the_session_password(world, monkeypatch):
    ctx, platform, _, _ = world
    opened = []

    class Conn:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def connect_dsn(dsn, password, timeout=3.0, **extra):
        opened.append((dsn, password, timeout, extra))
        return Conn()

    monkeypatch.setattr(context_module, "connect_dsn", connect_dsn)
    with ctx.session():
        assert ctx.on_primary_endpoint(lambda conn: "written", timeout=2, options="-c x=1") == "written"
        ctx.on_primary_endpoint(lambda conn: None)
    assert opened == [("host=primary user=postgres dbname=pg_ops", "secret", 2, {"options": "-c x=1"}),
                      ("host=primary user=postgres dbname=pg_ops", "secret", 3.0, {})]
    assert platform.calls == {"load_credentials": 1}
