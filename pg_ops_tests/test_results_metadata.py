"""Every result an op reports goes through pg_ops/defs/metadata.py and comes back unchanged: what
a run records (`metadata_of`) is what `pg-ops` reads (`from_metadata`), through the same plain
values pg_ops/runs.py hands over, in process and over GraphQL. No cluster needed."""

from __future__ import annotations

import dataclasses
import json

import dagster as dg
import pytest

from pg_ops import runs
from pg_ops.defs.metadata import from_metadata, metadata_of
from pg_ops.operations.failover import RebuildResult, RestartResult, TopologyChange
from pg_ops.operations.recover import PitrDrillReport, RecoverResult
from pg_ops.operations.restore import RestoreResult
from pg_ops.operations.rollout import RolloutResult

STEPS = {"confirm the primary is down": 0.0123, "promote": 0.5, "route the primary endpoint (failed)": 1.25}
RESULTS = [
    TopologyChange(operation="failover", cluster="c", old_primary="c-0", new_primary="c-1", epoch=4294967297,
                   timeline=3, lag_bytes_at_promotion=0, reference_lsn="0/3000060", detection_to_writable_s=2.5,
                   promoted_at=1765000000.25, seconds=3.1416, steps=STEPS, notes=["a note", "another"]),
    TopologyChange(operation="switchover", cluster="c", old_primary="c-1", new_primary="c-0", epoch=5),
    RebuildResult(member="c-1", method="re-clone", seconds=12.5, kept_aside="/data/c-1/data.diverged-1", steps=STEPS),
    RebuildResult(member="c-2", method="rewind", seconds=1.0),
    RestartResult(restarted=["c-1", "c-2", "c-0"], primary="c-1", epoch=7, seconds=30.25, steps=STEPS),
    RolloutResult(cluster="c", reloaded=["c-0", "c-1"], restarted=[], primary="c-0", epoch=2, seconds=4.5,
                  shown={"c-0": {"work_mem": "16MB"}, "c-1": {"work_mem": "16MB"}}, steps=STEPS,
                  write_pauses={"promote": 0.4}, write_paused_s=0.4),
    RecoverResult(cluster="c2", source="c", target="2026-12-08T01:00:00+00:00", base_backup="b1",
                  spec_path="/specs/c2.yaml", restore_seconds=1.5, replay_seconds=0.25, seconds=3.0,
                  members=["c2-0", "c2-1"], timeline=2),
    PitrDrillReport(cluster="c", result="passed", target_time="2026-12-08T01:00:00+00:00", base_backup="b1",
                    restore_seconds=1.5, replay_seconds=0.5, total_seconds=2.5, heartbeat_rows_before=10,
                    heartbeat_rows_after=0, markers={"before": "m1", "after": "m2"},
                    amcheck={"postgres": {"indexes_checked": 3, "problems": []}}),
    RestoreResult(cluster="c", backup_id="b1", source_database="app", target="host=h dbname=app user=u",
                  restored_bytes=123456, seconds=2.5, overwritten=False),
]


def in_process_values(metadata: dict[str, dg.MetadataValue]) -> dict:
    """What runs.outcome_of_result reads from an output event: each entry's `.value`."""
    return {k: v.value for k, v in metadata.items()}


def graphql_values(metadata: dict[str, dg.MetadataValue]) -> dict:
    """What runs.outcome_of_events reads from the same entries as the webserver serves them."""
    entries = []
    for label, value in metadata.items():
        if isinstance(value, dg.IntMetadataValue):
            entries.append({"label": label, "intValue": None, "intRepr": str(value.value)})
        elif isinstance(value, dg.FloatMetadataValue):
            entries.append({"label": label, "floatValue": value.value, "floatRepr": repr(value.value)})
        elif isinstance(value, dg.BoolMetadataValue):
            entries.append({"label": label, "boolValue": value.value})
        elif isinstance(value, dg.JsonMetadataValue):
            entries.append({"label": label, "jsonString": json.dumps(value.value)})
        else:
            entries.append({"label": label, "text": value.value})
    outcome = runs.outcome_of_events("r", "SUCCESS", "http://x", [
        {"__typename": "ExecutionStepOutputEvent", "stepKey": "op", "metadataEntries": entries}])
    return outcome.output_for_node("op")


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: f"{type(r).__name__}")
@pytest.mark.parametrize("read", [in_process_values, graphql_values], ids=["in process", "graphql"])
def test_every_result_reads_back_as_it_was_recorded(result, read):
    metadata = metadata_of(result, recorded_by="extra entries beside the result are ignored")
    assert from_metadata(type(result), read(metadata)) == result


def test_numbers_stay_numbers_and_the_steps_are_one_value():
    metadata = metadata_of(RESULTS[0], incident=None)
    assert isinstance(metadata["epoch"], dg.IntMetadataValue) and isinstance(metadata["seconds"], dg.FloatMetadataValue)
    assert metadata["steps"].value == STEPS and not any(k.startswith("step") and k != "steps" for k in metadata)
    assert "incident" not in metadata and "timeline" not in metadata_of(RESULTS[1])  # None: left out


def test_only_result_dataclasses_are_recorded():
    with pytest.raises(TypeError):
        metadata_of({"member": "c-1"})
    with pytest.raises(ValueError, match="epoch is a field of TopologyChange"):
        metadata_of(RESULTS[1], epoch=6)
    assert all(dataclasses.is_dataclass(r) for r in RESULTS)
