"""The alert engine (bot/alerting/engine.py) fed hand-made snapshots and an explicit clock: what the alert
channel would show (posts, redraws, thread lines) for outages, flapping, reminders, mutes and
acknowledgements. No Slack, no store, no real time: every transition is plain data.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial

import pytest

from bot.alerting import engine as alerts
from bot.alerting.engine import AlertState, Effect, Incident, Policy, Post, Refresh, Timeline
from bot.alerting.mute import MuteScope
from bot.alerting.views import incident_view
from bot.status import assess
from bot.status.snapshot import (
    BrokerStatus,
    CeleryState,
    CeleryStatus,
    Failure,
    FlowerStatus,
    Level,
    Problem,
    QueueInfo,
    Snapshot,
    WorkerInfo,
)
from tests.support import snapshots
from tests.support.snapshots import BROKER, FLOWER, queue, running

NOW = 1_800_000_000.0
POLL = 10.0  # seconds between polls
POLICY = Policy(alert_after=2, resolve_after=2, remind_seconds=600.0, backlog_threshold=100, backlog_seconds=300.0)


# --- Snapshots ------------------------------------------------------------------------------------


snapshot = partial(snapshots.snapshot, taken_at=NOW)


def healthy(*workers: str) -> Snapshot:
    return snapshot(celery=running(*(workers or ("w1@h",))))


def flower_down(kind: Failure = Failure.REFUSED) -> Snapshot:
    return snapshot(flower=FlowerStatus(FLOWER, Problem(kind, FLOWER)))


def flower_locked() -> Snapshot:
    """Flower answers 401: it runs, we cannot read it (a WARN, not DOWN)."""
    return flower_down(Failure.UNAUTHORIZED)


def broker_down() -> Snapshot:
    """What the probes report when the broker refuses: no queues, Celery unknown."""
    return snapshot(broker=BrokerStatus("rabbitmq", BROKER, problem=Problem(Failure.REFUSED, BROKER)),
                    celery=CeleryStatus(CeleryState.UNKNOWN))


def celery_stopped() -> Snapshot:
    return snapshot(celery=CeleryStatus(CeleryState.NOT_RUNNING))


def with_queues(*queues: QueueInfo, workers: tuple[str, ...] = ("w1@h",)) -> Snapshot:
    return snapshot(broker=BrokerStatus("rabbitmq", BROKER, queues=queues), celery=running(*workers))


# --- Driving the engine ---------------------------------------------------------------------------


class Engine:
    """The engine's state and a clock: each poll steps at the current time, then the clock moves on."""

    def __init__(self, policy: Policy = POLICY, state: AlertState | None = None, now: float = NOW) -> None:
        self.policy = policy
        self.state = state or AlertState()
        self.now = now

    def poll(self, *snapshots: Snapshot) -> list[Effect]:
        effects: list[Effect] = []
        for snap in snapshots:
            self.state, out = alerts.step(self.state, snap, self.now, self.policy)
            effects += out
            self.now += POLL
        return effects

    def poll_until(self, until: float, snap: Snapshot) -> list[Effect]:
        """Poll every POLL seconds while the clock is before `until` (exclusive)."""
        effects: list[Effect] = []
        while self.now < until:
            effects += self.poll(snap)
        return effects

    def fire(self, snap: Snapshot) -> Incident:
        """Poll until `snap` posts an alert; return the posted incident."""
        effects = self.poll(*[snap] * self.policy.alert_after)
        posted = [e.incident for e in effects if isinstance(e, Post)]
        assert len(posted) == 1, effects
        return posted[0]

    def acknowledge(self, incident_id: str, user: str = "alice") -> list[Effect]:
        self.state, effects = alerts.acknowledge(self.state, incident_id, user, self.now)
        return effects

    def snooze(self, incident_id: str, seconds: float, user: str = "bob") -> list[Effect]:
        self.state, effects = alerts.snooze(self.state, incident_id, self.now + seconds, user, self.now)
        return effects

    def mute(self, scope: str, seconds: float) -> float:
        until = self.now + seconds
        self.state = alerts.mute(self.state, scope, until)
        return until


def posts(effects: list[Effect]) -> list[Incident]:
    return [e.incident for e in effects if isinstance(e, Post)]


def refreshes(effects: list[Effect]) -> list[Incident]:
    return [e.incident for e in effects if isinstance(e, Refresh)]


def lines(effects: list[Effect]) -> list[str]:
    return [e.text for e in effects if isinstance(e, Timeline)]


def reminders(effects: list[Effect]) -> list[str]:
    return [text for text in lines(effects) if text.startswith("Still not resolved")]


def keys(incidents: list[Incident]) -> list[str]:
    return [i.key for i in incidents]


def round_trip(state: AlertState) -> AlertState:
    """What a restart does: the state saved as JSON text and read back."""
    return AlertState.from_json(json.loads(json.dumps(state.to_json())))


# --- Confirming failures and recoveries -----------------------------------------------------------


def test_one_bad_poll_posts_nothing() -> None:
    engine = Engine()
    assert engine.poll(healthy(), flower_down(), healthy(), healthy()) == []
    assert engine.state.incidents == {}


def test_two_bad_polls_post_exactly_one_alert_and_then_nothing_new() -> None:
    engine = Engine()
    engine.poll(healthy())
    first_bad = engine.now
    assert engine.poll(flower_down()) == []
    assert alerts.unsettled(engine.state)  # worth a quick second look

    effects = engine.poll(flower_down())
    assert len(effects) == 1 and isinstance(effects[0], Post)
    incident = effects[0].incident
    assert incident.key == "flower" and incident.level == Level.DOWN
    assert "Flower: Not running" in incident.text and "Has it been started?" in incident.text
    assert incident.started_at == first_bad  # "since" is the first bad poll, not the confirming one
    assert not alerts.unsettled(engine.state)

    assert engine.poll(*[flower_down()] * 20) == []


def test_flapping_never_posts() -> None:
    engine = Engine()
    assert engine.poll(*[flower_down(), healthy()] * 15) == []
    assert engine.state.incidents == {}


def test_firing_incident_does_not_resolve_while_flapping_and_resolves_after_two_good_polls() -> None:
    engine = Engine()
    incident = engine.fire(flower_down())

    assert engine.poll(*[healthy(), flower_down()] * 15) == []
    assert "flower" in engine.state.incidents

    assert engine.poll(healthy()) == []
    assert alerts.unsettled(engine.state)  # a recovery not yet confirmed
    resolved_at = engine.now
    effects = engine.poll(healthy())
    assert [type(e) for e in effects] == [Refresh, Timeline]
    resolved = refreshes(effects)[0]
    assert resolved.id == incident.id
    assert resolved.resolved_at == resolved_at and not resolved.open
    assert lines(effects) == [f"Resolved after {assess.duration(resolved_at - incident.started_at)}."]
    assert lines(effects)[0].startswith("Resolved after 5 min")
    assert engine.state.incidents == {}

    assert engine.poll(*[healthy()] * 5) == []


def test_a_new_outage_after_a_resolved_one_is_a_new_incident() -> None:
    engine = Engine()
    first = engine.fire(flower_down())
    engine.poll(healthy(), healthy())
    second = engine.fire(flower_down())
    assert second.id != first.id
    assert second.resolved_at is None


# --- No spam: one incident per cause --------------------------------------------------------------


def test_broker_down_is_one_incident_without_celery_or_worker_alerts() -> None:
    engine = Engine()
    engine.poll(healthy("w1@h", "w2@h"))
    effects = engine.poll(*[broker_down()] * 10)
    assert keys(posts(effects)) == ["broker"]
    assert len(effects) == 1
    incident = posts(effects)[0]
    assert incident.level == Level.DOWN
    assert "RabbitMQ: Not running" in incident.text
    assert incident.impact == "No task can be queued or processed while the broker is down."
    assert list(engine.state.incidents) == ["broker"]


@pytest.mark.parametrize("celery_state", [CeleryState.UNKNOWN, CeleryState.NOT_RUNNING])
def test_silent_workers_add_nothing_when_celery_itself_is_not_running(celery_state: CeleryState) -> None:
    engine = Engine()
    engine.poll(healthy("w1@h", "w2@h"))
    silent = CeleryStatus(celery_state, (WorkerInfo("w1@h", answered=False), WorkerInfo("w2@h", answered=False)))
    outage = broker_down() if celery_state is CeleryState.UNKNOWN else celery_stopped()
    effects = engine.poll(*[replace(outage, celery=silent)] * 5)
    assert keys(posts(effects)) == ["broker" if celery_state is CeleryState.UNKNOWN else "celery"]


def test_worker_that_does_not_answer_is_a_warning_of_its_own() -> None:
    engine = Engine()
    workers = (WorkerInfo("w1@h"), WorkerInfo("w2@h", answered=False))
    silent = snapshot(celery=CeleryStatus(CeleryState.RUNNING, workers))
    effects = engine.poll(silent, silent)
    assert keys(posts(effects)) == ["worker:w2@h"]
    assert posts(effects)[0].level == Level.WARN
    assert "did not answer" in posts(effects)[0].text


def test_broker_back_resolves_its_incident() -> None:
    engine = Engine()
    engine.poll(healthy())
    incident = engine.fire(broker_down())
    effects = engine.poll(healthy(), healthy())
    assert [r.id for r in refreshes(effects)] == [incident.id]
    assert lines(effects)[0].startswith("Resolved after")
    assert posts(effects) == []


def test_vanished_worker_opens_its_own_incident_and_resolves_when_it_answers() -> None:
    engine = Engine()
    engine.poll(healthy("w1@h", "w2@h"))
    effects = engine.poll(*[healthy("w1@h")] * 10)
    assert keys(posts(effects)) == ["worker:w2@h"]
    assert len(effects) == 1  # the wording stays put: no redraw every poll
    incident = posts(effects)[0]
    assert incident.level == Level.DOWN
    assert incident.text.startswith("Worker w2@h is gone")
    assert incident.impact == "Its tasks are not being processed; the other workers carry on."

    effects = engine.poll(healthy("w1@h", "w2@h"), healthy("w1@h", "w2@h"))
    assert [r.key for r in refreshes(effects)] == ["worker:w2@h"]
    assert refreshes(effects)[0].resolved_at is not None
    assert lines(effects)[0].startswith("Resolved after")
    assert engine.state.incidents == {}


def test_all_workers_gone_is_one_celery_incident_not_one_per_worker() -> None:
    engine = Engine()
    engine.poll(healthy("w1@h", "w2@h", "w3@h"))
    effects = engine.poll(*[celery_stopped()] * 10)
    assert keys(posts(effects)) == ["celery"]
    assert len(effects) == 1
    assert posts(effects)[0].text == "Celery: Not running: no worker answered"
    assert posts(effects)[0].impact == "No worker would process a task sent now."
    assert list(engine.state.incidents) == ["celery"]


def test_worker_incident_is_not_resolved_while_the_broker_is_down() -> None:
    engine = Engine()
    engine.poll(healthy("w1@h", "w2@h"))
    worker = engine.fire(healthy("w1@h"))
    effects = engine.poll(*[broker_down()] * 5) + engine.poll(*[healthy("w1@h")] * 5)
    # w2 never came back: its alert must not say "Resolved", nor be posted a second time.
    assert [r.id for r in refreshes(effects) if r.key == "worker:w2@h"] == []
    assert keys(posts(effects)) == ["broker"]
    assert engine.state.incidents["worker:w2@h"].id == worker.id


def test_worker_incident_is_not_resolved_when_every_worker_stops() -> None:
    engine = Engine()
    engine.poll(healthy("w1@h", "w2@h"))
    worker = engine.fire(healthy("w1@h"))
    effects = engine.poll(*[celery_stopped()] * 5) + engine.poll(*[healthy("w1@h")] * 5)
    assert not any(r.key == "worker:w2@h" and r.resolved_at for r in refreshes(effects))
    assert keys(posts(effects)) == ["celery"]
    assert engine.state.incidents["worker:w2@h"].id == worker.id


def test_queue_incident_is_not_resolved_while_the_broker_is_down() -> None:
    engine = Engine()
    engine.fire(with_queues(queue("celery", ready=5, consumers=0)))
    effects = engine.poll(*[broker_down()] * 5)
    assert not any(r.key == "queue:celery" and r.resolved_at for r in refreshes(effects))
    assert "queue:celery" in engine.state.incidents


# --- Reminders ------------------------------------------------------------------------------------


def test_reminder_after_remind_seconds_and_not_again_before_another_interval() -> None:
    engine = Engine()
    incident = engine.fire(flower_down())
    remind = POLICY.remind_seconds
    assert engine.poll_until(incident.fired_at + remind, flower_down()) == []

    effects = engine.poll(flower_down())
    assert len(effects) == 1 and isinstance(effects[0], Timeline)
    assert effects[0].text.startswith(f"Still not resolved after {assess.duration(remind + POLL)}")
    assert effects[0].text.endswith(incident.text)

    assert engine.poll_until(incident.fired_at + 2 * remind, flower_down()) == []
    assert len(reminders(engine.poll(flower_down()))) == 1


def test_no_reminders_after_acknowledge() -> None:
    engine = Engine()
    incident = engine.fire(flower_down())
    engine.acknowledge(incident.id)
    assert engine.poll_until(engine.now + 5 * POLICY.remind_seconds, flower_down()) == []


def test_no_reminders_while_snoozed_and_they_resume_after_the_snooze() -> None:
    engine = Engine()
    incident = engine.fire(flower_down())
    effects = engine.snooze(incident.id, 3 * POLICY.remind_seconds)
    until = engine.state.incidents["flower"].snoozed_until
    assert refreshes(effects)[0].snoozed_by == "bob"
    assert lines(effects) == ["Snoozed by bob."]

    assert engine.poll_until(until, flower_down()) == []
    assert len(reminders(engine.poll_until(until + POLICY.remind_seconds + POLL, flower_down()))) == 1


# --- Acknowledge ----------------------------------------------------------------------------------


def test_acknowledge_shows_who_and_only_once() -> None:
    engine = Engine()
    incident = engine.fire(flower_down())
    acked_at = engine.now
    effects = engine.acknowledge(incident.id, "alice")
    assert [type(e) for e in effects] == [Refresh, Timeline]
    acked = refreshes(effects)[0]
    assert acked.id == incident.id and acked.acked_by == "alice" and acked.acked_at == acked_at
    assert lines(effects) == ["Acknowledged by alice."]
    view = incident_view(acked, engine.now)
    assert any(item.title == "Acknowledged" and "by alice" in item.text for item in view.sections[0].items)

    before = engine.state
    assert engine.acknowledge(incident.id, "bob") == []
    assert engine.state == before
    assert engine.state.incidents["flower"].acked_by == "alice"


def test_acknowledge_of_an_unknown_or_resolved_incident_does_nothing() -> None:
    engine = Engine()
    incident = engine.fire(flower_down())
    before = engine.state
    assert engine.acknowledge("flower@123", "alice") == []
    assert engine.state == before

    engine.poll(healthy(), healthy())
    assert engine.acknowledge(incident.id, "alice") == []


# --- Mutes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["flower", MuteScope.ALL])
def test_failure_during_a_mute_is_posted_once_when_the_mute_ends(scope: str) -> None:
    engine = Engine()
    until = engine.mute(scope, 1800)
    assert engine.poll_until(until, flower_down()) == []
    effects = engine.poll(flower_down())
    assert keys(posts(effects)) == ["flower"]
    assert effects == [Post(posts(effects)[0])]
    assert posts(engine.poll(*[flower_down()] * 5)) == []
    assert not engine.state.incidents["flower"].silenced


@pytest.mark.parametrize("scope", ["flower", MuteScope.ALL])
def test_failure_that_recovers_during_a_mute_is_never_posted(scope: str) -> None:
    engine = Engine()
    until = engine.mute(scope, 1800)
    assert engine.poll(*[flower_down()] * 20) == []
    assert engine.poll_until(until, healthy()) == []
    assert engine.poll(*[healthy()] * 10, *[flower_down()]) == []  # nothing at all, not even a "Resolved"


def test_flower_mute_does_not_silence_the_broker() -> None:
    engine = Engine()
    engine.mute("flower", 1800)
    assert keys(posts(engine.poll(*[broker_down()] * 3))) == ["broker"]


def test_all_mute_silences_the_broker_and_unmute_posts_at_the_next_poll() -> None:
    engine = Engine()
    engine.mute(MuteScope.ALL, 1800)
    assert engine.poll(*[broker_down()] * 5) == []
    engine.state = alerts.unmute(engine.state)
    assert keys(posts(engine.poll(broker_down()))) == ["broker"]


def test_no_reminder_right_after_an_alert_posted_at_the_end_of_a_mute() -> None:
    engine = Engine()
    until = engine.mute("flower", 3 * POLICY.remind_seconds)
    engine.poll_until(until, flower_down())
    assert len(posts(engine.poll(flower_down()))) == 1
    posted_at = engine.now - POLL
    assert reminders(engine.poll_until(posted_at + POLICY.remind_seconds, flower_down())) == []


# --- Queues ---------------------------------------------------------------------------------------


def test_backlog_over_threshold_for_backlog_seconds_fires_a_warning() -> None:
    engine = Engine()
    busy = with_queues(queue("celery", ready=150, consumers=2), queue("other", ready=3, consumers=1))
    start = engine.now
    assert engine.poll_until(start + POLICY.backlog_seconds, busy) == []
    effects = engine.poll(*[busy] * POLICY.alert_after)
    assert keys(posts(effects)) == ["queue:celery:backlog"]
    incident = posts(effects)[0]
    assert incident.level == Level.WARN
    assert incident.text == f"Queue celery: more than 100 tasks waiting since {assess.time_of_day(start)}"
    assert incident.impact == "Tasks waiting in celery are not being processed."
    assert engine.poll(*[busy] * 10) == []


def test_backlog_that_dips_below_the_threshold_starts_counting_again() -> None:
    engine = Engine()
    busy = with_queues(queue("celery", ready=150, consumers=2))
    dipped = with_queues(queue("celery", ready=100, consumers=2))  # at the threshold is not more than it
    assert engine.poll_until(engine.now + POLICY.backlog_seconds - POLL, busy) == []
    assert engine.poll(dipped) == []
    restart = engine.now
    assert engine.poll_until(restart + POLICY.backlog_seconds, busy) == []
    assert keys(posts(engine.poll(*[busy] * POLICY.alert_after))) == ["queue:celery:backlog"]


def test_waiting_tasks_without_consumers_fire_on_the_queue() -> None:
    engine = Engine()
    stuck = with_queues(queue("celery", ready=0, consumers=1), queue("spare", ready=5, consumers=0))
    assert engine.poll(stuck) == []
    effects = engine.poll(stuck)
    assert keys(posts(effects)) == ["queue:spare"]
    assert posts(effects)[0].level == Level.WARN
    assert "nothing consumes this queue" in posts(effects)[0].text
    # Once the queue is empty, nobody consuming it is fine again.
    effects = engine.poll(*[with_queues(queue("spare", ready=0, consumers=0))] * 2)
    assert [r.key for r in refreshes(effects) if r.resolved_at] == ["queue:spare"]


# --- Restarts -------------------------------------------------------------------------------------


def test_state_survives_a_json_round_trip_mid_incident() -> None:
    engine = Engine()
    engine.mute("broker", 3600)
    busy = with_queues(queue("celery", ready=150, consumers=2), workers=("w1@h", "w2@h"))
    busy_flower_down = replace(busy, flower=flower_down().flower)
    incident = engine.fire(busy_flower_down)
    engine.acknowledge(incident.id)
    assert engine.state.known_workers and engine.state.backlog_since and engine.state.mutes  # all of it is saved

    before = engine.state
    engine.state = round_trip(before)
    assert engine.state == before

    assert engine.poll(*[busy_flower_down] * 5) == []  # no second post, no reminder (acknowledged)
    effects = engine.poll(healthy("w1@h", "w2@h"), healthy("w1@h", "w2@h"))
    assert [r.id for r in refreshes(effects)] == [incident.id]
    assert lines(effects)[0].startswith("Resolved after")


def test_pending_failure_survives_a_json_round_trip() -> None:
    engine = Engine()
    assert engine.poll(flower_down()) == []
    engine.state = round_trip(engine.state)
    assert keys(posts(engine.poll(flower_down()))) == ["flower"]


# --- Changes in an open incident ------------------------------------------------------------------


def test_level_change_redraws_and_says_so_in_the_thread() -> None:
    engine = Engine()
    incident = engine.fire(flower_locked())
    assert incident.level == Level.WARN
    effects = engine.poll(flower_down())
    assert [type(e) for e in effects] == [Refresh, Timeline]
    changed = refreshes(effects)[0]
    assert changed.id == incident.id and changed.level == Level.DOWN
    assert lines(effects) == [f"Now: {changed.text}"]
    assert lines(effects)[0].startswith("Now: Flower: Not running")
    assert engine.poll(*[flower_down()] * 3) == []


def test_text_change_at_the_same_level_redraws_without_a_thread_line() -> None:
    engine = Engine()
    incident = engine.fire(flower_down(Failure.REFUSED))
    effects = engine.poll(flower_down(Failure.TIMEOUT))
    assert [type(e) for e in effects] == [Refresh]
    assert refreshes(effects)[0].id == incident.id
    assert "timed out" in refreshes(effects)[0].text
    assert refreshes(effects)[0].level == Level.DOWN


# --- The alert message ----------------------------------------------------------------------------


def test_incident_view_of_an_open_incident_offers_acknowledge_snooze_and_status() -> None:
    engine = Engine()
    incident = engine.fire(flower_down())
    view = incident_view(incident, engine.now)
    ids = [a.action_id for a in view.actions]
    assert "alert_ack" in ids and "alert_status" in ids
    assert any(i.startswith("alert_snooze_") for i in ids)
    assert all(a.value.startswith(incident.id) for a in view.actions)
    assert view.text.startswith("Alert: Flower")  # the plain fallback: "<title>: <summary>"
    assert view.level is Level.DOWN
    assert "Resolved" not in json.dumps([item.title for item in view.sections[0].items])


def test_incident_view_of_a_resolved_incident_has_no_buttons_and_says_resolved() -> None:
    engine = Engine()
    engine.fire(flower_down())
    resolved = refreshes(engine.poll(healthy(), healthy()))[0]
    view = incident_view(resolved, engine.now + 3600)
    assert view.actions == ()
    assert view.text.startswith("Resolved: Flower")
    assert view.level is Level.OK
    items = {item.title: item.text for item in view.sections[0].items}
    duration = assess.duration(resolved.resolved_at - resolved.started_at)
    assert items["Resolved"] == f"after {duration}, at {assess.time_of_day(resolved.resolved_at)}"
