"""Which endpoint subscriptions of the application reach the trunk (pure part of recovery)."""

from __future__ import annotations

from callrouter.calls.recovery import UNUSED_EVENTS, wide_endpoint_watch


def test_a_technology_wide_subscription_is_wide() -> None:
    assert wide_endpoint_watch({"endpoint_ids": ["PJSIP", "PJSIP/s110-01"]})


def test_seat_endpoints_alone_are_not() -> None:
    assert not wide_endpoint_watch({"endpoint_ids": ["PJSIP/s110-01", "PJSIP/ovf-01"]})
    assert not wide_endpoint_watch({"endpoint_ids": []})
    assert not wide_endpoint_watch({})


def test_events_the_router_reads_are_never_filtered_out() -> None:
    read = {"StasisStart", "StasisEnd", "ChannelDestroyed", "ChannelTransfer", "ChannelDtmfReceived",
            "PlaybackFinished", "EndpointStateChange"}
    assert not read & set(UNUSED_EVENTS)
