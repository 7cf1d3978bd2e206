"""The ARI client's request and event counters (what a call costs Asterisk): pure parts."""

from __future__ import annotations

from callrouter.ari.client import AriClient, request_kind


def test_request_kind_drops_the_ids() -> None:
    assert request_kind("POST", "/channels/c1/play/greet-c1") == "POST channels/play"
    assert request_kind("POST", "/channels") == "POST channels"
    assert request_kind("DELETE", "/channels/c1") == "DELETE channels"
    assert request_kind("POST", "/bridges/callrouter-110-hold-0/addChannel") == "POST bridges/addChannel"
    assert request_kind("POST", "/applications/callrouter/subscription") == "POST applications/subscription"
    assert request_kind("GET", "/asterisk/ping") == "GET asterisk/ping"


def test_metrics_text_lists_requests_and_events() -> None:
    ari = AriClient("http://127.0.0.1:1/ari", "u", "p", "callrouter")
    ari.requests.update({"POST channels/play": 3})
    ari.events.update({"StasisStart": 2})
    text = ari.metrics_text()
    assert 'callrouter_ari_requests_total{request="POST channels/play"} 3' in text
    assert 'callrouter_ari_events_total{type="StasisStart"} 2' in text
