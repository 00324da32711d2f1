"""MemberReport (platforms/base.py): the member script's key=value report parsed once, typed."""

from pg_ops.platforms.base import DiscardedWrites, MemberReport

TEXT = """boot.action=clone
boot.reason=from m-0
boot.at=1765000000
isolated.at=1765000100
isolated.reason=no lease renewal for 10.0 s
upgrade.id=u1
upgrade.step=linked
upgrade.reason=
upgrade.system_identifier=7312345678901234567
passfile.generation=3
discarded.at=1765000050
discarded.from=0/3000000
discarded.to=0/3000082
discarded.timeline=1
discarded.bytes=130
discarded.transactions=1
discarded.kept_aside=
discarded.unknown=
some.future_key=ignored
not a pair
"""


def test_every_key_member_sh_writes_is_a_field():
    report = MemberReport.parse(TEXT)
    assert report == MemberReport(
        boot_action="clone", boot_reason="from m-0", boot_at=1765000000, isolated_at=1765000100.0,
        isolated_reason="no lease renewal for 10.0 s", upgrade_id="u1", upgrade_step="linked", upgrade_reason="",
        upgrade_system_identifier="7312345678901234567", passfile_generation=3,
        discarded=DiscardedWrites(at=1765000050, from_lsn="0/3000000", to_lsn="0/3000082", timeline=1, bytes=130,
                                  transactions=1, kept_aside=None, unknown=None))
    assert report.refused is None


def test_empty_values_are_none_and_a_refusal_has_its_reason():
    report = MemberReport.parse("boot.action=refused\nboot.reason=initdb failed\nboot.at=\nisolated.at=\n"
                                "discarded.at=\npassfile.generation=\n")
    assert report.refused == "initdb failed" and report.boot_at is None and report.isolated_at is None
    assert report.discarded is None and report.passfile_generation is None
    assert MemberReport.parse("") == MemberReport() and MemberReport().refused is None


def test_uncounted_discarded_writes_keep_their_reason():
    report = MemberReport.parse("discarded.at=1\ndiscarded.from=0/3000000\ndiscarded.timeline=1\ndiscarded.to=\n"
                                "discarded.bytes=\ndiscarded.transactions=\ndiscarded.unknown=the WAL is gone\n")
    assert report.discarded == DiscardedWrites(at=1, from_lsn="0/3000000", to_lsn="", timeline=1, bytes=None,
                                               transactions=None, kept_aside=None, unknown="the WAL is gone")
