"""sip-sim driver: the simulated trunk and seat softphones (SIPp)."""
