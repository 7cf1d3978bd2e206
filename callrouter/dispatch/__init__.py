"""Dispatch: the units that act on tickets, the orders sent to them, and the dispatcher.

``units`` reads ``queues/units.toml``; ``store`` keeps orders and their webhook outbox
beside the tickets (same database, same transactions); ``dispatcher`` is the process
(``callrouter dispatch run``) that turns ticket events on the stream into orders,
notifies the units and escalates the ones that do not acknowledge in time.
"""
