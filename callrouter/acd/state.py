"""Everything the core knows, in one place (what a snapshot saves and restores)."""

from __future__ import annotations

from dataclasses import dataclass, field

from callrouter.acd.lines import LineConfig, LinesConfig
from callrouter.acd.model import Call, Seat
from callrouter.acd.overflow import OverflowState
from callrouter.acd.stats import ArrivalRate, LineCounters, TalkTime
from callrouter.acd.waiting import WaitingQueue


@dataclass
class LineRuntime:
    cfg: LineConfig
    queue: WaitingQueue
    arrivals: ArrivalRate
    talk: TalkTime
    counters: LineCounters = field(default_factory=LineCounters)
    overflow: OverflowState = field(default_factory=OverflowState)
    predicted_sl: float | None = None  # last predictive evaluation, for the wallboard

    @classmethod
    def new(cls, cfg: LineConfig) -> LineRuntime:
        return cls(
            cfg=cfg,
            queue=WaitingQueue(cfg.ageing_step_s, cfg.ageing_floor),
            arrivals=ArrivalRate(cfg.overflow.rate_window_s),
            talk=TalkTime(cfg.aht_default_s, cfg.aht_alpha),
        )

    def reconfigure(self, cfg: LineConfig) -> None:
        self.cfg = cfg
        self.queue.ageing_step_s = cfg.ageing_step_s
        self.queue.ageing_floor = cfg.ageing_floor
        self.arrivals.window_s = cfg.overflow.rate_window_s
        self.talk.alpha = cfg.aht_alpha

    @property
    def aht_s(self) -> float:
        """How long a call keeps a seat: talk time plus wrap-up."""
        return self.talk.mean_s + self.cfg.wrap_up_s


@dataclass
class AcdState:
    config: LinesConfig
    lines: dict[str, LineRuntime]  # in rank order
    seats: dict[str, Seat]
    calls: dict[str, Call]  # every live call: waiting, ringing, on a call
    ringing: dict[str, Call]  # the calls with an offer out
    seq: int = 0


def seats_from_config(config: LinesConfig) -> list[Seat]:
    """Every configured seat, logged out: the line seats, then the pool."""
    seats: list[Seat] = []
    for line in config.lines:
        for sc in line.seats:
            seats.append(Seat(sc.id, sc.endpoint, line.id, frozenset({line.id})))
    for pc in config.pool:
        seats.append(Seat(pc.id, pc.endpoint, None, frozenset(pc.lines)))
    return seats
