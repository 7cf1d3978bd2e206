"""Asterisk's security log, read incrementally and counted by event type."""

from __future__ import annotations

import os
from pathlib import Path

from callrouter.security_events import SecurityEvents, parse_event

INVALID = ('[2026-12-01 00:35:27.123] SECURITY[123] res_security_log.c: SecurityEvent="InvalidAccountID",'
           'EventTV="2026-12-01T00:35:27.123+0000",Severity="Error",Service="PJSIP",EventVersion="1",'
           'AccountID="100",SessionID="1-22@127.0.44.4",LocalAddress="IPV4/UDP/127.0.1.4/5060",'
           'RemoteAddress="IPV4/UDP/127.0.44.4/5061"\n')
FAILED = INVALID.replace("InvalidAccountID", "ChallengeResponseFailed")


def test_an_event_line_gives_its_type_and_service() -> None:
    assert parse_event(INVALID) == ("InvalidAccountID", "PJSIP")
    assert parse_event("[2026-12-01 00:32:07.519] Asterisk 22.10.1 built by nobody") is None
    # the attacker controls the account id, never the label
    assert parse_event('SecurityEvent="Bad\\"} 1\\nevil",Service="PJSIP"') is None


def test_counts_what_is_appended_after_start(tmp_path: Path) -> None:
    log = tmp_path / "security.log"
    log.write_text(INVALID * 3)
    events = SecurityEvents(log)
    events.start_at_end()
    assert events.poll() == 0 and events.readable
    with log.open("a") as fh:
        fh.write(INVALID + FAILED * 2 + FAILED[:40])  # the last line is not finished yet
    assert events.poll() == 3
    assert events.counts == {"InvalidAccountID": 1, "ChallengeResponseFailed": 2}
    with log.open("a") as fh:
        fh.write(FAILED[40:])
    assert events.poll() == 1 and events.counts["ChallengeResponseFailed"] == 3
    text = events.metrics_text()
    assert 'callrouter_sip_security_events_total{event="ChallengeResponseFailed"} 3' in text
    assert "callrouter_sip_security_log_readable 1" in text


def test_a_rotated_or_truncated_log_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "security.log"
    log.write_text(INVALID)
    events = SecurityEvents(log)
    events.start_at_end()
    os.rename(log, tmp_path / "security.log.0")
    log.write_text(FAILED)
    assert events.poll() == 1
    log.write_text("")
    log.write_text(INVALID)  # truncated, then written again: shorter than the offset
    assert events.poll() == 1
    assert events.counts == {"ChallengeResponseFailed": 1, "InvalidAccountID": 1}


def test_a_missing_log_is_reported_not_raised(tmp_path: Path) -> None:
    events = SecurityEvents(tmp_path / "nope.log")
    assert events.poll() == 0 and not events.readable
    assert "callrouter_sip_security_log_readable 0" in events.metrics_text()
