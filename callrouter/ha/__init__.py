"""Several engines on one Asterisk: one leads (claims the calls, runs the queues), the
others stand by and take over when it dies.

``lease`` decides (pure: times in, steps out); ``redis_lease`` talks to Redis;
``leader`` carries the decisions out for the engine (claims, take-over, step-down).
"""
