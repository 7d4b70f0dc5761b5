"""Hostile input, property-based: whatever a user types or a forged click claims, the bot answers plainly,
stays inside Slack's limits, never turns user text into a mention, never echoes a password, and changes
nothing it was not legitimately asked to change.

Two layers:

* in-process, hundreds of examples: `Commands` over a hand-built snapshot (plain data, no service
  mocked), plus a real `History` and `AlertService` on a throwaway SQLite store where a property needs
  them;
* through the real `opsbot run` process in Socket Mode against the Slack stand-in and the real stack,
  a handful of examples each (marked integration).

The inputs that once broke the bot (odd Unicode digits as page numbers, a 40,000-letter word, a
quote in a URL password, a mention in the fallback text, a password in a history filter) each keep a
test of their own.
"""

from __future__ import annotations

import json
import re
import sqlite3
import string
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from bot import markup
from bot.alerting.service import AlertService
from bot.alerting.sinks import ConsoleSink
from bot.alerting.state import AlertStore
from bot.commands.dispatch import Commands, Reply
from bot.commands.grammar import FORGED
from bot.config import Settings
from bot.control.access import Actor
from bot.db import Database
from bot.history.read import History
from bot.history.store import HistoryStore
from bot.slack import blocks, buttons
from bot.slack.buttons import SECTIONS, SNOOZES
from bot.status.snapshot import (
    BrokerStatus,
    Failure,
    FlowerStatus,
    Problem,
    QueueInfo,
    Snapshot,
)
from tests.support import snapshots
from tests.support.bot import BotProcess
from tests.support.celery_procs import CeleryWorker, publish_tasks
from tests.support.net import free_port, wait_until
from tests.support.rabbit import RabbitNode, queue_counts
from tests.support.slack import SlackStandIn, block_action_payload, slash_command_payload
from tests.support.slack.rules import message_error
from tests.support.snapshots import busy

ADMIN, USER, STRANGER = "U_ADMIN", "U_USER", "U_NOBODY"
ACTOR = Actor(ADMIN, markup.mention(ADMIN))
NOW = 1_800_000_000.0

PAGE_BUTTONS = ("page_prev", "page_next", "page_refresh", "page_active", "page_workers", "share")
HISTORY_BUTTONS = ("history_newer", "history_older")
KNOWN_BUTTONS = (*PAGE_BUTTONS, *HISTORY_BUTTONS, "terminate", "kill", "purge")
ALERT_BUTTONS = (*(f"alert_snooze_{value}" for _, value in SNOOZES), "alert_ack", "alert_status")
SNOOZE_VALUES = tuple(value for _, value in SNOOZES)
HISTORY_STATES = ("", "SUCCESS", "FAILURE", "REVOKED", "REJECTED")
NOT_DONE = "nothing was done"

# What a crash looks like when it leaks into a message.
CRASH = re.compile(r"Traceback|\b(?:" + "|".join((
    "KeyError", "AttributeError", "TypeError", "ValueError", "IndexError", "NameError", "UnboundLocalError",
    "AssertionError", "ZeroDivisionError", "OverflowError", "RecursionError", "RuntimeError", "LookupError",
    "NotImplementedError", "UnicodeEncodeError", "UnicodeDecodeError", "JSONDecodeError", "StopIteration",
    "SlackObjectFormationError", "SlackApiError", "IntegrityError", "ProgrammingError", "OperationalError",
    "DataError", "ValidationError")) + r")\b")
# Slack mrkdwn that pings or links: user data must only ever reach Slack as &lt;!channel&gt; etc.
LIVE_MARKUP = re.compile(r"<[!@#]|<(?:https?|mailto):", re.IGNORECASE)

FAST = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
# Through the real process: few examples, no shrinking (each one costs a round trip or several).
SLOW = settings(max_examples=15, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))


# --- Strategies -------------------------------------------------------------------------------

HOSTILE = (
    "<!channel>", "<!here>", "<!everyone>", "<!subteam^S0123|ops>", "<@U123>", "<@W0ADMIN|boss>", "<#C123|ops>",
    "<https://evil.example|click me>", "<mailto:a@b.c|mail>", "&lt;!channel&gt;", "&amp;", "amqp://user:pw@host",
    "redis://:pw@redis:6379/0", "\x00", "\x1b[31m", "\u202e", "\u200b", "\ufeff", "\u2028", "```", "*bold*", "_x_",
    "~x~", "`", "xoxb-1234-5678-abcdefghij", "xapp-1-A1-2-abc", "${jndi:ldap://x/a}", "'; DROP TABLE audit; --",
    "../../etc/passwd", "%s%n%x", "{0.__class__}", "\r\n", "\t", "🔥", "İ", "ß", "e\u0301", "Ⅻ", "١٢",
    "\uff37\uff2f\uff32\uff2b\uff25\uff32\uff33",  # fullwidth WORKERS
)
WORDS = (
    "/tasks", "overview", "status", "workers", "worker", "queues", "queue", "active", "running", "help", "-h", "?",
    "terminate", "kill", "purge", "audit", "mute", "unmute", "incidents", "history", "show", "WORKERS", "Purge",
    "failed", "succeeded", "revoked", "rejected", "0", "1", "2", "10000", "10001", "-1", "1e3", "99999999999999999999",
    "30m", "0s", "8d", "9999d", "broker", "celery", "flower", "other", "spare", "celery.pidbox",
)
PASSWORD_CHARS = string.ascii_letters + string.digits + "-._~!$&()*+,;=%:"  # RFC 3986 userinfo, minus quotes
noise = st.one_of(st.sampled_from(HOSTILE), st.sampled_from(WORDS), st.text(max_size=30), st.uuids().map(str))
separators = st.sampled_from([" ", " ", " ", "  ", "\t", "\n", "\r\n", "\u3000", "\xa0", ""])


@st.composite
def secret_url(draw: st.DrawFn) -> tuple[str, str]:
    """A credential URL and its password (recognisable: nothing else in the input contains it)."""
    password = "Pw0" + draw(st.text(PASSWORD_CHARS, min_size=5, max_size=24))
    scheme = draw(st.sampled_from(["amqp", "amqps", "redis", "rediss", "sqla+postgresql", "https"]))
    user = draw(st.text(string.ascii_letters + string.digits, max_size=12))
    host = draw(st.sampled_from(["host", "rabbit.internal:5672//", "10.0.0.1:6379/0"]))
    return f"{scheme}://{user}:{password}@{host}", password


@st.composite
def typed(draw: st.DrawFn) -> tuple[str, list[str]]:
    """Slash-command text, and the passwords hidden in it. Sometimes huge (up to ~100k characters)."""
    parts: list[str] = []
    passwords: list[str] = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 5)) == 0:
            url, password = draw(secret_url())
            parts.append(url)
            passwords.append(password)
        else:
            parts.append(draw(noise))
        parts.append(draw(separators))
    text = "".join(parts)
    if draw(st.integers(0, 7)) == 0:
        unit = draw(st.text(min_size=1, max_size=20))
        text += draw(separators) + unit * draw(st.integers(1, 100_000 // len(unit)))
    return text, passwords


section_values = st.builds("{}:{}".format, st.sampled_from((*SECTIONS, "nowhere", "")), st.integers(-5, 100_001))
history_values = st.builds("{}|{}|{}".format, st.one_of(st.integers(-1, 10_001).map(str), st.text(max_size=5)),
                           st.sampled_from((*HISTORY_STATES, "PENDING", "failed")), st.text(max_size=120))
targets = st.one_of(st.uuids().map(str), st.text(max_size=300), st.sampled_from(HOSTILE),
                    st.sampled_from(["celery", "other", "spare", " spare\n", "celery.pidbox", "amq.rabbitmq.trace"]))
target_values = st.builds("{}|{}".format, st.sampled_from((*SECTIONS, "nowhere", "")), targets)
huge_values = st.builds(lambda unit, times: unit * times, st.text(min_size=1, max_size=10), st.integers(1, 10_000))
button_values = st.one_of(st.text(), st.sampled_from(HOSTILE), section_values, history_values, target_values,
                          huge_values)
action_ids = st.one_of(st.sampled_from(KNOWN_BUTTONS + ALERT_BUTTONS), st.text(max_size=40),
                       st.sampled_from(["Page", "page ", "page", "history_page", "page_", " terminate",
                                        "terminate\x00", "alert_snooze_", "reboot", "", "share\n",
                                        "alert_snooze_60", "alert_ackx"]))


# --- Checks -----------------------------------------------------------------------------------


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def check_slack_message(message: dict[str, Any]) -> None:
    """Slack accepts it (the stand-in's validator) and it has a fallback text."""
    text = message.get("text")
    assert isinstance(text, str) and text.strip() and len(text) <= 3000, f"bad fallback text {text!r:.200}"
    refused = message_error(message)
    assert refused is None, refused


def rendered(reply: Reply) -> dict[str, Any]:
    assert isinstance(reply, Reply), f"not a Reply: {reply!r:.200}"
    message = blocks.message(reply.view)
    check_slack_message(message)
    json.dumps(message)  # serialisable as Slack receives it
    return message


def flat(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False)


def assert_no_live_markup_in_blocks(message: dict[str, Any], ours: tuple[str, ...] = ()) -> None:
    """`ours`: mentions our own sentences make ("Shared by <@U_ADMIN>"), never user data."""
    for text in strings_in(message.get("blocks") or []):
        for mention in ours:
            text = text.replace(mention, "")
        assert not LIVE_MARKUP.search(text), f"live mention or link in a block: {text!r:.300}"


def assert_no_password(message: dict[str, Any], passwords: Sequence[str]) -> None:
    everything = flat(message)
    assert ":pw@" not in everything
    for password in passwords:
        assert password not in everything and markup.escape(password) not in everything, \
            f"password {password!r} echoed: {everything[:600]}"


def assert_no_crash(message: dict[str, Any]) -> None:
    found = CRASH.search(flat(message))
    assert not found, f"{found.group()} shown to the user: {flat(message)[:600]}"


def is_forged(reply: Reply | None) -> bool:
    return reply is not None and reply.view.summary == FORGED and not reply.replace_original


# --- Layer 1: in-process ----------------------------------------------------------------------


def snapshot(flower: FlowerStatus | None = None) -> Snapshot:
    """Enough of everything for every view to page and show buttons: 2 workers, 30 running tasks, 3 queues."""
    queues = (QueueInfo("celery", 0, 2, 30), QueueInfo("other", 4, 0, 0), QueueInfo("spare", 3, 0, 0))
    return snapshots.snapshot(BrokerStatus("rabbitmq", "127.0.0.1:5672", queues=queues),
                              busy(2, 15, lambda n, t: NOW - 60 * t, "(42,)"), flower, taken_at=NOW, elapsed=0.042)


SNAPSHOT = snapshot()
STATUS = Commands(take_snapshot=lambda: SNAPSHOT, control=None)


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def local_settings(db: Path) -> Settings:
    return Settings(db_url=f"sqlite:///{db}", flower_url=closed_url(), probe_timeout=0.5,
                    broker_url="amqp://guest:guest@127.0.0.1:1//", rabbitmq_management_url=closed_url())


@pytest.fixture(scope="module")
def history_commands(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Commands]:
    """A real History on an empty store; Flower (its fallback) is a closed port, refused at once."""
    settings_ = local_settings(tmp_path_factory.mktemp("history") / "opsbot.sqlite3")
    store = Database(settings_.db_url)
    yield Commands(take_snapshot=lambda: SNAPSHOT, control=None, history=History(settings_, HistoryStore(store), None))
    store.close()


@FAST
@given(typed=typed())
@example(typed=("<!channel>", []))
@example(typed=("workers <@U123>", []))
@example(typed=("amqp://user:pw@host", []))
@example(typed=("active 2 amqp://user:pw@host \x00 <!here>", []))
@example(typed=("\x00" * 100_000, []))
@example(typed=("/tasks " + "x " * 50_000, []))
@example(typed=("/tasks show " + "-" * 100_000, []))
def test_any_typed_text_gets_a_plain_reply_inside_slack_limits(typed: tuple[str, list[str]]) -> None:
    text, passwords = typed
    reply = STATUS.run_text(text, ACTOR)
    message = rendered(reply)
    assert_no_live_markup_in_blocks(message)
    assert_no_password(message, passwords)
    assert_no_crash(message)


@FAST
@given(mention=st.sampled_from(["<!channel>", "<!here>", "<@U123>", "<#C1|x>", "<https://evil.example|x>"]),
       before=st.sampled_from(["", "workers ", "active "]))
@example(mention="<!channel>", before="")
def test_fallback_text_does_not_echo_live_mentions(mention: str, before: str) -> None:
    message = rendered(STATUS.run_text(before + mention, ACTOR))
    assert not LIVE_MARKUP.search(message["text"]), message["text"]


@settings(max_examples=30, deadline=None, database=None)
@given(digit=st.sampled_from([c for c in map(chr, range(0x3000)) if c.isdigit() and not c.isdecimal()]),
       how=st.sampled_from(["text", "history_older"]))
@example(digit="²", how="text")
def test_odd_unicode_digits_are_usage_errors(digit: str, how: str) -> None:
    if how == "text":
        reply = STATUS.run_text(f"workers {digit}", ACTOR)
        assert "not a page number" in reply.view.summary
    else:
        assert is_forged(STATUS.run_button("history_older", f"{digit}||", ACTOR))


def test_echoing_a_long_word_is_fast() -> None:
    started = time.perf_counter()
    reply = STATUS.run_text("x" * 40_000, ACTOR)
    elapsed = time.perf_counter() - started
    assert "Unknown subcommand" in reply.view.summary
    assert elapsed < 0.3, f"{elapsed:.2f} s to answer one long word"


@FAST
@given(url=secret_url(), quote=st.sampled_from(["'", '"']))
@example(url=("amqp://user:Pw0abcdef@host", "Pw0abcdef"), quote="'")
def test_quotes_in_url_passwords_are_redacted(url: tuple[str, str], quote: str) -> None:
    full, password = url
    assume(password[3:] not in full.replace(password, ""))  # the rest of the URL must not contain it
    leaky = password[:3] + quote + password[3:]
    message = rendered(STATUS.run_text(full.replace(password, leaky), ACTOR))
    # What leaks is the password as typed, up to the "@" that ends it (the rest of the help may
    # happen to contain a short fragment like "state").
    assert f"{password[3:]}@" not in flat(message), flat(message)[:400]


@FAST
@given(url=secret_url(), state=st.sampled_from(["", "failed ", "succeeded "]))
@example(url=("amqp://user:pw@host", "pw@"), state="")
def test_history_filter_echo_hides_passwords(history_commands: Commands, url: tuple[str, str], state: str) -> None:
    full, password = url
    assume(len(full) <= 100)  # longer filters are refused before anything is echoed
    message = rendered(history_commands.run_text(f"history {state}{full}", ACTOR))
    assert_no_password(message, [password])


@FAST
@given(typed=typed())
@example(typed=("history <!channel>", []))
@example(typed=("show <@U123>", []))
@example(typed=("history failed " + "x" * 100, []))
def test_history_and_show_answer_any_text_inside_slack_limits(history_commands: Commands,
                                                              typed: tuple[str, list[str]]) -> None:
    text, _ = typed
    for command in (f"history {text}", f"show {text}"):
        message = rendered(history_commands.run_text(command, ACTOR))
        assert_no_live_markup_in_blocks(message)
        assert_no_crash(message)


@FAST
@given(action_id=action_ids, value=button_values)
@example(action_id="reboot", value="active|x")
@example(action_id="page_refresh", value="overview:" + "9" * 100_000)
@example(action_id="page", value="overview:1")  # the id every paging button once shared: no longer ours
@example(action_id="terminate", value="active|" + "a" * 255 + "\n")
@example(action_id="history_newer", value="1||" + "<!channel>")
def test_any_click_is_answered_safely(action_id: str, value: str) -> None:
    reply = STATUS.run_button(action_id, value, ACTOR)
    message = rendered(reply)
    assert_no_live_markup_in_blocks(message)
    assert_no_crash(message)
    if action_id not in KNOWN_BUTTONS:
        assert is_forged(reply), f"{action_id!r} answered {reply.view.summary!r}"


def not_ours(text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return text.filter(lambda s: s not in SECTIONS and "|" not in s)


no_digits = st.text(alphabet=st.characters(exclude_categories=("Nd", "No", "Nl")), min_size=1, max_size=20)


@st.composite
def malformed_click(draw: st.DrawFn) -> tuple[str, str]:
    """A known button with a value none of our views can have made."""
    action = draw(st.sampled_from(KNOWN_BUTTONS))
    if action in PAGE_BUTTONS:
        section = st.sampled_from(SECTIONS)
        value = draw(st.one_of(
            st.text().filter(lambda v: ":" not in v),
            st.builds("{}:{}".format, not_ours(st.text(max_size=20)), st.integers(1, 10_000)),
            st.builds("{}:{}".format, section, st.one_of(st.integers(max_value=0), st.integers(min_value=10_001))),
            st.builds("{}:{}".format, section, no_digits),
        ))
    elif action in HISTORY_BUTTONS:
        value = draw(st.one_of(
            st.builds("{}|{}|{}".format, no_digits.filter(lambda s: "|" not in s), st.sampled_from(HISTORY_STATES),
                      st.text(max_size=20)),
            st.builds("{}|{}|{}".format, st.one_of(st.integers(max_value=0), st.integers(min_value=10_001)),
                      st.sampled_from(HISTORY_STATES), st.text(max_size=20)),
            st.builds("{}|{}|{}".format, st.integers(1, 10_000),
                      st.text(max_size=20).filter(lambda s: s not in HISTORY_STATES and "|" not in s),
                      st.text(max_size=20)),
            st.builds("{}|{}|{}".format, st.integers(1, 10_000), st.sampled_from(HISTORY_STATES),
                      st.text(min_size=101, max_size=300)),
        ))
    else:
        value = draw(st.one_of(
            st.text().filter(lambda v: "|" not in v),
            st.builds("{}|{}".format, not_ours(st.text(max_size=20)), st.text(min_size=1, max_size=60)),
            st.builds("{}|".format, st.sampled_from(SECTIONS)),
            st.builds("{}|{}".format, st.sampled_from(SECTIONS), st.text(min_size=257, max_size=600)),
        ))
    return action, value


@FAST
@given(click=malformed_click())
@example(click=("terminate", "a-task-id-without-section"))
@example(click=("kill", "nowhere|a-task-id"))
@example(click=("page_next", "overview:0"))
@example(click=("history_older", "1|PENDING|"))
def test_malformed_values_of_known_buttons_are_forged(click: tuple[str, str]) -> None:
    action_id, value = click
    reply = STATUS.run_button(action_id, value, ACTOR)
    assert is_forged(reply), f"{action_id} {value!r:.100} answered {reply.view.summary!r}"
    rendered(reply)


@pytest.fixture
def alert_commands(tmp_path: Path) -> Iterator[tuple[Commands, AlertService]]:
    """A real AlertService (never started: no scheduler) with one open incident: Flower refused twice."""
    settings_ = local_settings(tmp_path / "alerts.sqlite3")
    store = Database(settings_.db_url)
    flower_down = snapshot(FlowerStatus("http://127.0.0.1:5555", Problem(Failure.REFUSED, "http://127.0.0.1:5555")))
    lines: list[str] = []
    service = AlertService(settings_, AlertStore(store), lambda: flower_down, ConsoleSink(lines.append))
    for _ in range(settings_.alert_after + 1):
        service.poll()
    assert service.open_incidents(), f"no incident opened: {lines}"
    yield Commands(take_snapshot=lambda: SNAPSHOT, control=None, alerts=service), service
    store.close()


@FAST
@given(data=st.data(), action_id=action_ids)
def test_any_alert_click_is_answered_or_acts_on_exactly_its_incident(
        alert_commands: tuple[Commands, AlertService], data: st.DataObject, action_id: str) -> None:
    commands, service = alert_commands
    incident, *_ = service.open_incidents()
    known = {i.id for i in service.open_incidents()}
    value = data.draw(st.one_of(
        button_values, st.just(incident.id), st.just(incident.id + "|"),
        st.builds(lambda how: f"{incident.id}|{how}", st.one_of(st.sampled_from(SNOOZE_VALUES), st.text(max_size=12))),
        st.just(buttons.key_of(incident.id)), st.just(buttons.key_of(incident.id) + "|3600"),
        st.builds(lambda junk, how: f"{junk}|{how}", st.text(max_size=40), st.sampled_from(SNOOZE_VALUES)),
    ), label="value")
    # Acknowledge names the incident by the whole value; a snooze as "<incident>|<how long>", the same
    # length as its action_id says.
    how_long = action_id.removeprefix("alert_snooze_")
    target, _, in_value = value.rpartition("|") if action_id.startswith("alert_snooze_") else (value, "", "")
    reply = commands.run_alert_button(action_id, value, ACTOR)
    if action_id == "alert_status":
        assert reply is not None and not reply.replace_original and reply.view.title == "Task status"
    elif action_id == "alert_ack" or (how_long in SNOOZE_VALUES and in_value == how_long):
        if reply is None:  # acted: only ever on the incident the value names (itself or by its key)
            assert buttons.resolve(target, known) in known
        else:
            assert not reply.replace_original and NOT_DONE in reply.view.summary
    else:
        assert is_forged(reply), f"{action_id!r} {value!r:.80} answered {reply and reply.view.summary!r}"
    if reply is not None:
        message = rendered(reply)
        assert_no_live_markup_in_blocks(message)
        assert_no_crash(message)


@FAST
@given(action_id=action_ids, value=button_values)
def test_alert_clicks_without_alerting_say_it_is_off(action_id: str, value: str) -> None:
    reply = STATUS.run_alert_button(action_id, value, ACTOR)
    assert reply is not None and not reply.replace_original
    rendered(reply)


# --- Layer 2: the real bot process ------------------------------------------------------------


def text_of(payload: dict[str, Any]) -> str:
    return json.dumps(payload.get("blocks", []), ensure_ascii=False) + "\n" + str(payload.get("text", ""))


def slash(slack: SlackStandIn, text: str, user_id: str = ADMIN) -> dict[str, Any]:
    return slack.wait_ack(slack.send_slash_command(text, user_id=user_id), timeout=3.0)


def url_id(response_url: str) -> str:
    return response_url.rsplit("/", 1)[1]


def answer_at(slack: SlackStandIn, response_url: str, timeout: float) -> dict[str, Any] | None:
    key = url_id(response_url)
    try:
        return slack.wait_for_response(lambda r: r.url_id == key, timeout=timeout).body
    except TimeoutError:
        return None


def assert_harmless(answer: dict[str, Any], user: str, passwords: Sequence[str] = ()) -> None:
    assert "_raw" not in answer, f"not JSON: {answer}"
    check_slack_message(answer)
    assert_no_crash(answer)
    assert_no_live_markup_in_blocks(answer, ours=(f"<@{user}>",))
    assert_no_password(answer, passwords)


def waiting_in_spare(rabbit: RabbitNode) -> int | None:
    counts = queue_counts(rabbit.amqp_url, "spare")
    return counts[0] if counts else None


def audit_rows(db: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select user_id, action, target, outcome from audit order by id").fetchall()


@dataclass
class Scene:
    bot: BotProcess
    sleeper: str  # a task running on the session worker for the whole test
    spare: int  # tasks waiting in queue spare, which nothing consumes


@pytest.fixture
def scene(slack: SlackStandIn, socket_bot: Any, rabbit: RabbitNode, worker: CeleryWorker) -> Scene:
    # Alerting on, so alert buttons reach the real AlertService (its listener has no safely() around it).
    bot = socket_bot(OPSBOT_ADMINS=ADMIN, OPSBOT_QUEUES="celery,other,spare", OPSBOT_ALERT_CHANNEL="C_ALERTS")
    (task_id,) = publish_tasks(rabbit.amqp_url, "stackapp.sleep", 1, args=(60,))
    assert wait_until(lambda: task_id in text_of(slash(slack, "active")), 15), "the sleeper never started"
    publish_tasks(rabbit.amqp_url, "stackapp.add", 3, queue="spare", args=(1, 1))
    assert wait_until(lambda: waiting_in_spare(rabbit) == 3, 5)
    return Scene(bot, task_id, 3)


def purges_spare(action_id: str, value: str | None, user: str) -> bool:
    """The one legitimate, destructive click a draw can make: an admin purging queue spare."""
    if user != ADMIN or action_id != "purge" or value is None:
        return False
    _, sep, target = value.partition("|")
    return bool(sep) and target.strip() == "spare"


def assert_nothing_changed(slack: SlackStandIn, scene: Scene, rabbit: RabbitNode, db: Path) -> None:
    assert waiting_in_spare(rabbit) == scene.spare
    assert scene.sleeper in text_of(slash(slack, "active")), "the running task was stopped"
    rows = audit_rows(db)
    assert not [r for r in rows if r[1] in ("terminate", "kill") and r[3] in ("done", "signalled")], rows
    assert all(r[3] in ("denied", "forged") for r in rows if r[0] != ADMIN), rows


@pytest.mark.integration
def test_hostile_clicks_are_acked_answered_and_change_nothing(slack: SlackStandIn, scene: Scene, rabbit: RabbitNode,
                                                              tmp_path: Path) -> None:
    real_targets = st.sampled_from([f"active|{scene.sleeper}", f"overview|{scene.sleeper}", "queues|spare",
                                    "overview|spare", f"queues|{scene.sleeper}"])
    values = st.one_of(st.none(), button_values, st.uuids().map(lambda u: f"active|{u}"),
                       st.text().map("active|".__add__), st.text().map("queues|".__add__))

    @st.composite
    def hostile_click(draw: st.DrawFn) -> tuple[str, str | None, str]:
        if draw(st.integers(0, 4)) == 0:  # non-admins also aim at what really exists
            return (draw(st.sampled_from(("terminate", "kill", "purge"))), draw(real_targets),
                    draw(st.sampled_from([USER, STRANGER])))
        action_id = draw(st.one_of(st.sampled_from((*KNOWN_BUTTONS, "alert_ack", "alert_snooze_3600",
                                                    "alert_status")), action_ids))
        return action_id, draw(values), draw(st.sampled_from([ADMIN, ADMIN, USER, STRANGER]))

    @settings(SLOW, max_examples=25)
    @given(click=hostile_click().filter(
        lambda c: not purges_spare(*c) and not (c[2] == ADMIN and scene.sleeper in (c[1] or ""))))
    @example(click=("terminate", f"active|{scene.sleeper}", USER))
    @example(click=("purge", "queues|spare", USER))
    @example(click=("terminate", "active|00000000-0000-0000-0000-000000000000", ADMIN))
    @example(click=("kill", "active|bad id; rm -rf /", ADMIN))
    @example(click=("purge", "queues|celery.pidbox", ADMIN))
    @example(click=("history_older", "²||", ADMIN))
    def clicks_change_nothing(click: tuple[str, str | None, str]) -> None:
        action_id, value, user = click
        response_url = slack.new_response_url("C_OPS")
        envelope = slack.send_block_action(action_id, value, user_id=user, response_url=response_url)
        slack.wait_ack(envelope, timeout=3.0)
        answer = answer_at(slack, response_url, timeout=10)
        assert answer is not None, f"no answer to {click!r:.200}"
        assert_harmless(answer, user)
        assert waiting_in_spare(rabbit) == scene.spare

    clicks_change_nothing()
    assert_nothing_changed(slack, scene, rabbit, tmp_path / "opsbot.sqlite3")
    assert scene.bot.process.poll() is None


def typed_purge_of_spare(text: str) -> bool:
    words = text.split()
    if words and words[0] == "/tasks":
        words = words[1:]
    return len(words) == 2 and words[0].lower() == "purge" and words[1] == "spare"


@pytest.mark.integration
def test_hostile_slash_commands_are_acked_and_change_nothing(slack: SlackStandIn, scene: Scene, rabbit: RabbitNode,
                                                             tmp_path: Path) -> None:
    real_commands = st.sampled_from([f"terminate {scene.sleeper}", f"kill {scene.sleeper}", "purge spare",
                                     "/tasks purge  spare", "mute 1d", "unmute", "audit"])
    verbs = st.sampled_from(["terminate", "kill", "purge", "show", "history", "history failed", "mute", "active"])

    @st.composite
    def hostile_command(draw: st.DrawFn) -> tuple[tuple[str, list[str]], str]:
        roll = draw(st.integers(0, 4))
        if roll == 0:  # non-admins also aim at what really exists
            return (draw(real_commands), []), draw(st.sampled_from([USER, STRANGER]))
        user = draw(st.sampled_from([ADMIN, ADMIN, USER, STRANGER]))
        if roll == 1:  # a subcommand that acts, with a hostile argument
            argument = draw(st.one_of(noise, st.uuids().map(str), secret_url().map(lambda u: u[0])))
            return (f"{draw(verbs)} {argument}", []), user
        return draw(typed()), user

    @settings(SLOW, max_examples=25)
    @given(command=hostile_command().filter(
        lambda c: not (c[1] == ADMIN and (typed_purge_of_spare(c[0][0]) or scene.sleeper in c[0][0]))))
    @example(command=(("<!channel> amqp://user:pw@host", []), USER))
    @example(command=((f"terminate {scene.sleeper}", []), USER))
    @example(command=(("terminate active|" + "x" * 300, []), ADMIN))
    @example(command=(("x\x00" * 50_000, []), ADMIN))
    @example(command=(("terminate 00000000-0000-0000-0000-000000000000", []), ADMIN))
    @example(command=(("purge <!channel>", []), ADMIN))
    def commands_change_nothing(command: tuple[tuple[str, list[str]], str]) -> None:
        (text, passwords), user = command
        response_url = slack.new_response_url("C_OPS")
        envelope = slack.send_slash_command(text, user_id=user, response_url=response_url)
        ack = slack.wait_ack(envelope, timeout=3.0)
        assert_harmless(ack, user, passwords)
        if "Working on it" in ack.get("text", ""):
            answer = answer_at(slack, response_url, timeout=10)
            assert answer is not None, f"no answer after 'Working on it' to {text!r:.200}"
            assert_harmless(answer, user, passwords)
        assert waiting_in_spare(rabbit) == scene.spare

    commands_change_nothing()
    assert_nothing_changed(slack, scene, rabbit, tmp_path / "opsbot.sqlite3")
    assert scene.bot.process.poll() is None


@pytest.mark.integration
def test_odd_unicode_digit_page_is_acked_in_slack(slack: SlackStandIn, socket_bot: Any) -> None:
    socket_bot()
    assert "Task status" in text_of(slash(slack, ""))
    assert "not a page number" in text_of(slash(slack, "workers ²"))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


@st.composite
def broken_block_action(draw: st.DrawFn) -> dict[str, Any]:
    """A real block_actions payload with parts deleted or replaced by JSON of the wrong shape."""
    payload = block_action_payload(draw(st.sampled_from(KNOWN_BUTTONS)), draw(button_values), user_id=USER)
    for part in draw(st.lists(st.sampled_from(["type", "user", "actions", "container", "channel", "team",
                                               "user.id", "actions.0", "actions.0.action_id", "actions.0.value",
                                               "container.type"]), min_size=1, max_size=4, unique=True)):
        holder, key = payload, part
        if "." in part:
            first, rest = part.split(".", 1)
            holder = payload.get(first)
            key = rest
            if key.startswith("0"):
                if not isinstance(holder, list) or not holder:
                    continue
                if key == "0":
                    holder[0] = draw(JSON_VALUES)
                    continue
                holder, key = holder[0], key.split(".", 1)[1]
            if not isinstance(holder, dict):
                continue
        if draw(st.booleans()):
            holder.pop(key, None)
        else:
            holder[key] = draw(JSON_VALUES)
    return payload


BROKEN_ENVELOPES: list[tuple[str, Any]] = [
    ("interactive", {k: v for k, v in block_action_payload("page_refresh", "overview:1").items() if k != "actions"}),
    ("interactive", {k: v for k, v in block_action_payload("purge", "queues|spare").items() if k != "user"}),
    ("interactive", block_action_payload("purge", "queues|spare") | {"user": "U_ADMIN"}),
    ("interactive", block_action_payload("terminate", "active|x") | {"actions": {"action_id": "terminate"}}),
    ("interactive", block_action_payload("page_refresh", "overview:1") | {"actions": []}),
    ("interactive", block_action_payload("page_refresh", "overview:1") | {"actions": [None, "page", 7]}),
    ("interactive", block_action_payload("page_refresh", "overview:1")
     | {"actions": [{"action_id": 5, "value": {"a": 1}}]}),
    ("interactive", block_action_payload("purge", "queues|spare") | {"user": {"id": ["U_ADMIN"]}}),
    ("interactive", block_action_payload("purge", "queues|spare") | {"user": {"id": None}}),
    ("interactive", block_action_payload("page_refresh", "overview:1") | {"container": {"type": "view"}}),
    ("interactive", block_action_payload("page_refresh", "overview:1") | {"container": ["view"]}),
    ("interactive", block_action_payload("page_refresh", "overview:1") | {"type": 7}),
    ("interactive", {"type": "view_submission"}),
    ("interactive", {}),
    ("interactive", []),
    ("interactive", "block_actions"),
    ("interactive", None),
    ("slash_commands", {k: v for k, v in slash_command_payload("purge spare").items() if k != "command"}),
    ("slash_commands", slash_command_payload("workers") | {"text": 42}),
    ("slash_commands", slash_command_payload("purge spare") | {"user_id": {"id": "U_ADMIN"}}),
    ("slash_commands", slash_command_payload("active") | {"text": None, "user_id": None}),
    ("events_api", {"type": "event_callback"}),
    ("events_api", {"type": "event_callback", "event": {"type": "app_home_opened", "user": ["U1"], "tab": "home"}}),
    ("events_api", {"type": "event_callback", "event": "app_home_opened"}),
    ("bogus_type", {"anything": True}),
]


@pytest.mark.integration
def test_broken_envelopes_leave_the_bot_connected_and_answering(slack: SlackStandIn, socket_bot: Any,
                                                                rabbit: RabbitNode) -> None:
    bot = socket_bot(OPSBOT_ADMINS=ADMIN, OPSBOT_QUEUES="celery,other,spare")
    publish_tasks(rabbit.amqp_url, "stackapp.add", 3, queue="spare", args=(1, 1))
    assert wait_until(lambda: waiting_in_spare(rabbit) == 3, 5)
    connections = slack.total_connections

    def send(kind: str, payload: Any) -> None:
        if isinstance(payload, dict) and kind in ("interactive", "slash_commands"):
            payload = payload | {"response_url": slack.new_response_url("C_OPS")}
        slack.send_envelope(kind, payload, accepts_response_payload=kind == "slash_commands")

    for kind, payload in BROKEN_ENVELOPES:
        send(kind, payload)

    @SLOW
    @given(payload=broken_block_action())
    def broken_clicks(payload: dict[str, Any]) -> None:
        send("interactive", payload)

    broken_clicks()
    assert "Task status" in text_of(slash(slack, "")), "a normal /tasks is no longer answered"
    response_url = slack.new_response_url("C_OPS")
    slack.wait_ack(slack.send_block_action("page_refresh", "queues:1", user_id=USER, response_url=response_url),
                   timeout=3.0)
    assert "Queues" in text_of(answer_at(slack, response_url, timeout=10) or {}), "a normal click is no longer answered"
    assert bot.process.poll() is None and slack.connections >= 1
    assert slack.total_connections == connections, "the bot had to reconnect"
    for response in slack.responses:  # whatever the broken payloads were answered: no crash shown
        assert "_raw" not in response.body
        assert_no_crash(response.body)
    assert waiting_in_spare(rabbit) == 3, "a broken payload purged queue spare"
