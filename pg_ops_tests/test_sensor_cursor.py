"""The health sensor's memory as types (operations/health.py): SensorCursor and the TickMemory
of each cluster, with one to/from JSON (operations/stored.py). A cursor written by the pg_ops
before they were typed reads as it is, so an upgrade keeps the sensor's memory."""

import json

from pg_ops.operations.ha.model import HaMemory, Incident
from pg_ops.operations.health import Alerted, Detection, Seen, SensorCursor, TickMemory
from pg_ops.operations.slo import failed_member_detection
from pg_ops.postgres.lsn import Lsn

# Written by pg_ops at e15480b (defs/health.evaluate_health's json.dumps of its dict cursor,
# filled by that commit's health functions: HaMemory.to_dict, _track_detections,
# due_observations, reported_events, alerts.reconcile).
OLD_CURSOR = (r'{"alerts": {"c/member_down/c-0": {"cluster": "c", "severity": "critical", "kind": "member_down", '
              r'"summary": "c-0 (primary) does not answer", "details": {"member": "c-0"}, '
              r'"fired_at": 1765000000.0, "resolved_at": null}}, '
              r'"clusters": {"c": {"ha": {"down_since": 1764999993.0, "no_standby_since": null, '
              r'"departed": {"c-2": 83886336}, "last_primary_lsn": "0/5000100", '
              r'"incident": {"id": "1765000000-3", "requested": true, "signature": "abc", "run_failed": false, '
              r'"refused": null}}, "last_up": {"c-0": 1764999990.0, "c-1": 1765000000.0, "c-2": 1765000000.0}, '
              r'"down": {"c-0": 1765000000.0}, "observed": {"c-0": {"sig": "down|None|None|False", '
              r'"at": 1765000000.0}, "c-1": {"sig": "replica|True|2|False", "at": 1765000000.0}, '
              r'"c-2": {"sig": "replica|False|2|False", "at": 1765000000.0}}, '
              r'"reported": {"c-1": {"discarded": "1764999970"}, "c-2": {"isolated": "1764999980"}}}}, '
              r'"ticks": [1764999990.0, 1764999995.0, 1765000000.0], "detections": [{"cluster": "c", '
              r'"member": "c-0", "seen_down_at": 1765000000.0, "last_seen_up_at": 1764999990.0, '
              r'"seconds": 10.0}], "reported": {"c": {"sig": "[\"c-0\"]", "at": 1765000000.0}}, '
              r'"probe_seconds": 0.412}')


def test_a_cursor_written_before_the_types_reads_as_it_is():
    cursor = SensorCursor.from_json(OLD_CURSOR)
    memory = cursor.clusters["c"]
    assert memory.ha == HaMemory(incident=Incident(id="1765000000-3", requested=True, signature="abc"),
                                 down_since=1764999993.0, departed={"c-2": Lsn.parse("0/5000100")},
                                 last_primary_lsn=Lsn.parse("0/5000100"))
    assert memory.last_up == {"c-0": 1764999990.0, "c-1": 1765000000.0, "c-2": 1765000000.0}
    assert memory.down == {"c-0": 1765000000.0}
    assert memory.observed["c-1"] == Seen("replica|True|2|False", 1765000000.0)
    # Kept as text then (the report's own spelling): read as the times they are.
    assert memory.reported == {"c-1": Alerted(discarded=1764999970), "c-2": Alerted(isolated=1764999980.0)}
    assert cursor.detections == [Detection(cluster="c", member="c-0", seen_down_at=1765000000.0,
                                           last_seen_up_at=1764999990.0, seconds=10.0)]
    assert cursor.ticks == [1764999990.0, 1764999995.0, 1765000000.0] and cursor.probe_seconds == 0.412
    assert cursor.reported == {"c": Seen('["c-0"]', 1765000000.0)}
    assert cursor.alerts == json.loads(OLD_CURSOR)["alerts"]
    # ... and the slo check reads it as the old dict did.
    level = failed_member_detection(cursor, "c", now=1765000001.0, sensor_interval=5)
    assert level.passed and level.details["worst_recorded_s"] == 10.0


def test_round_trip_keeps_everything_and_reads_as_json():
    cursor = SensorCursor.from_json(OLD_CURSOR)
    text = cursor.to_json()
    assert SensorCursor.from_json(text) == cursor
    stored = json.loads(text)  # readable: plain JSON, LSNs as PostgreSQL prints them
    assert stored["clusters"]["c"]["ha"]["departed"] == {"c-2": "0/5000100"}
    assert stored["detections"][0] == {"cluster": "c", "member": "c-0", "seen_down_at": 1765000000.0,
                                       "last_seen_up_at": 1764999990.0, "seconds": 10.0}
    assert set(stored) == {"alerts", "clusters", "ticks", "detections", "reported", "probe_seconds"}


def test_an_empty_or_unreadable_cursor_is_a_fresh_start():
    for raw in (None, "", "not json", "[]", '{"ticks": "never"}'):
        assert SensorCursor.from_json(raw) == SensorCursor()
    assert SensorCursor.from_json('{"ticks": [1.0], "unknown_key": 3}').ticks == [1.0]


def test_tick_memory_defaults_to_nothing_remembered():
    memory = TickMemory()
    assert memory.ha == HaMemory() and not (memory.observed or memory.last_up or memory.down or memory.reported)
