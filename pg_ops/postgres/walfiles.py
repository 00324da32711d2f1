"""WAL file names as PostgreSQL writes them (16 MB segments, the default pg_ops never changes).

    000000020000000A0000003F           segment: timeline 2, log 0xA, segment 0x3F
    000000020000000A0000003F.partial   the last, incomplete segment of a timeline (after promotion)
    000000020000000A0000003F.00000028.backup   a base backup's label
    00000002.history                   timeline 2's history: where it forked from timeline 1

A segment's number (`segno`) orders segments across timelines: a promoted standby's first
segment on the new timeline has the same number as the last one of the old timeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEGMENT_BYTES = 16 * 1024 * 1024
SEGMENTS_PER_LOG = 0x100000000 // SEGMENT_BYTES  # 256
SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")
HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")


@dataclass(frozen=True, order=True)
class Segment:
    segno: int
    timeline: int
    partial: bool = False

    @property
    def name(self) -> str:
        return segment_name(self.timeline, self.segno) + (".partial" if self.partial else "")


def segment_name(timeline: int, segno: int) -> str:
    return f"{timeline:08X}{segno // SEGMENTS_PER_LOG:08X}{segno % SEGMENTS_PER_LOG:08X}"


def parse_segment(name: str) -> Segment | None:
    """A segment (or .partial) file name; None for anything else (history, .backup, …)."""
    m = SEGMENT.match(name)
    if not m:
        return None
    return Segment(int(m.group(2), 16) * SEGMENTS_PER_LOG + int(m.group(3), 16), int(m.group(1), 16),
                   bool(m.group(4)))


def history_timeline(name: str) -> int | None:
    m = HISTORY.match(name)
    return int(m.group(1), 16) if m else None


def lsn_segno(lsn: str) -> int:
    hi, _, lo = lsn.partition("/")
    return ((int(hi, 16) << 32) + int(lo, 16)) // SEGMENT_BYTES


def segment_end(segno: int) -> int:
    """The WAL position right after segment `segno`."""
    return (segno + 1) * SEGMENT_BYTES


def parse_history(text: str) -> list[tuple[int, str]]:
    """A timeline history file: [(parent timeline, switch LSN)], oldest first."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit():
            out.append((int(fields[0]), fields[1]))
    return out
