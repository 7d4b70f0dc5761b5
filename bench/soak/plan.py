"""What the soak will do, decided up front from the seed: the fault kinds, their schedule and holds. Pure.

Faults run on two tracks. The *stack* track breaks what opsbot watches (a worker, the RabbitMQ node,
Flower): each such fault should end in exactly one alert, resolved once the service is back, so two of
them never overlap (their alerts would be indistinguishable from a flap). The *bot* track breaks
opsbot's own surroundings (the leading replica, its database connection, Slack's Web API, the Socket
Mode connections): those faults start while a stack fault is under way, at a random moment of it, which
is the point: an alert must survive a leader change or a Slack outage that happens while it is open.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


class Track(Enum):
    STACK = "stack"
    BOT = "bot"


class Kind(Enum):
    """A fault the injector can pick; the value is its name in tables and on the command line."""

    WORKER = "worker-kill"
    RABBIT = "rabbitmq-kill"
    FLOWER = "flower-kill"
    LEADER = "leader-kill"
    DB_BLACK_HOLE = "db-black-hole"
    SLACK_429 = "slack-429"
    SLACK_5XX = "slack-5xx"
    SLACK_TIMEOUT = "slack-timeout"
    SLACK_INVALID_BLOCKS = "slack-invalid-blocks"
    SOCKET_DISCONNECT = "socket-disconnect"

    @property
    def track(self) -> Track:
        return Track.STACK if self in (Kind.WORKER, Kind.RABBIT, Kind.FLOWER) else Track.BOT


@dataclass(frozen=True)
class Profile:
    """Gaps between faults and how long each kind holds, in seconds (low, high)."""

    gap: tuple[float, float]
    hold: dict[Kind, tuple[float, float]]
    settle: float  # a stack fault's budget after its repair: the service back, the alert resolved


SLACK_KINDS = (Kind.SLACK_429, Kind.SLACK_5XX, Kind.SLACK_TIMEOUT, Kind.SLACK_INVALID_BLOCKS)

# The soak: a fault every 20-60 s; services down 15-40 s, long past the alert threshold.
LONG = Profile(gap=(20.0, 60.0), settle=90.0, hold={
    Kind.WORKER: (15.0, 40.0), Kind.RABBIT: (15.0, 40.0), Kind.FLOWER: (15.0, 40.0),
    Kind.LEADER: (5.0, 20.0), Kind.DB_BLACK_HOLE: (10.0, 45.0), Kind.SOCKET_DISCONNECT: (0.0, 0.0),
    **{kind: (10.0, 40.0) for kind in SLACK_KINDS},
})
# `make test`'s two minutes: shorter gaps and holds, still past the alert threshold, so that every
# fault has recovered well inside the run on a busy 2-core machine.
SHORT = Profile(gap=(12.0, 22.0), settle=75.0, hold={
    Kind.WORKER: (12.0, 16.0), Kind.RABBIT: (12.0, 16.0), Kind.FLOWER: (12.0, 16.0),
    Kind.LEADER: (4.0, 8.0), Kind.DB_BLACK_HOLE: (8.0, 14.0), Kind.SOCKET_DISCONNECT: (0.0, 0.0),
    **{kind: (6.0, 10.0) for kind in SLACK_KINDS},
})
BOT_SETTLE = 30.0  # a bot-track fault's budget after its repair: the replica back, connected
# How long a fault usually keeps its track busy after its hold, for planning only: at run time a fault
# whose track is still busy waits for it.
NOMINAL_RECOVERY = {Track.STACK: 25.0, Track.BOT: 10.0}
ALERT_OPEN = 5.0  # a stack fault's alert resolves about this long after its repair
WARM_UP_FAULT_FREE = 20.0  # the first fault comes no earlier: replicas settled, memory measured


def profile_for(minutes: float) -> Profile:
    return SHORT if minutes < 10 else LONG


@dataclass(frozen=True)
class Planned:
    at: float  # seconds after the soak started
    kind: Kind
    hold: float

    @property
    def busy(self) -> float:
        """How long the fault keeps its track busy, nominally: hold, repair and recovery."""
        return self.hold + NOMINAL_RECOVERY[self.kind.track]


def plan(seed: int, seconds: float, kinds: tuple[Kind, ...], profile: Profile) -> list[Planned]:
    """A fault every `profile.gap` seconds, each one repaired before the end (its recovery may run into
    the drain); kinds come from shuffled decks, so that each is drawn as often as the others.

    The gaps pace the stack track. Each stack fault comes with a bot-track fault (the next card of the
    bot deck, when that track is free) at a random moment while the stack fault's alert is open: a
    leader change, a Slack outage or a lost connection then meets an alert in flight. Without stack
    kinds the gaps pace the bot track alone.
    """
    rng = random.Random(seed)
    decks: dict[Track, list[Kind]] = {Track.STACK: [], Track.BOT: []}
    paced = Track.STACK if any(k.track is Track.STACK for k in kinds) else Track.BOT
    busy_until = {Track.STACK: 0.0, Track.BOT: 0.0}
    planned: list[Planned] = []
    at = WARM_UP_FAULT_FREE
    while at < seconds:
        at += rng.uniform(*profile.gap)
        fault = draw(rng, decks, kinds, paced, at, seconds, profile) if busy_until[paced] <= at else None
        if fault is None:
            continue
        planned.append(fault)
        busy_until[paced] = at + fault.busy
        companion_at = at + rng.uniform(0, fault.hold + ALERT_OPEN)
        if paced is Track.STACK and busy_until[Track.BOT] <= companion_at:
            companion = draw(rng, decks, kinds, Track.BOT, companion_at, seconds, profile)
            if companion is not None:
                planned.append(companion)
                busy_until[Track.BOT] = companion_at + companion.busy
    return sorted(planned, key=lambda p: p.at)


def draw(rng: random.Random, decks: dict[Track, list[Kind]], kinds: tuple[Kind, ...], track: Track, at: float,
         end: float, profile: Profile) -> Planned | None:
    """The next card of the track's deck (shuffled again once played out), as a fault at `at`; None,
    and the card kept for later, when the fault would outlast `end`."""
    if not decks[track]:
        cards = [k for k in kinds if k.track is track]
        decks[track] = rng.sample(cards, len(cards))
    if not decks[track]:
        return None
    kind = decks[track][0]
    fault = Planned(round(at, 1), kind, round(rng.uniform(*profile.hold[kind]), 1))
    if at + fault.hold > end:
        return None
    decks[track].pop(0)
    return fault


def parse_kinds(text: str) -> tuple[Kind, ...]:
    """`--faults worker-kill,slack-429`: known names only, at least one."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = {kind.value: kind for kind in Kind}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"--faults: unknown {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(known)}")
    return tuple(known[name] for name in names)
