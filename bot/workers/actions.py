"""Worker control against the stack: Celery's remote control (`app.control`) with replies, checked
afterwards through Celery's own inspect.

`WorkerStack` makes the calls; `WorkerControl` holds the order of things: who may act, what the input
names, which workers can do it, what each worker answered, whether its state shows the change, what
the store remembers, and exactly one audit entry per attempt (through task control's audit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import kombu
from celery import Celery

from bot.config import Settings
from bot.control.tasks import BrokerUnreachable, Outcome, TaskControl, broker_connection
from bot.probes.celery_probe import DISCOVERY_TIMEOUT, active_tasks, autoscale_bounds, pool_name, pool_size, queue_names
from bot.slack import buttons
from bot.status.snapshot import Level, Snapshot, WorkerInfo
from bot.status.views import View, message_view
from bot.workers import rules, views
from bot.workers.pauses import queue_pauses
from bot.workers.rules import BadInput, Request, Result, WorkerResult
from bot.workers.store import PauseStore

REPLY_TIMEOUT = 2.0  # for the replies of the workers we address by name: `limit` returns as soon as all did
# `/tasks workers` is answered in Slack's 3-second ack after a snapshot: its queues and limits get what is left.
ENRICH_TIMEOUT = 0.4
VERIFY_SECONDS = 6.0  # how long a change may take to show in inspect (add_consumer runs "soon", not at once)
VERIFY_POLL = 0.2


@dataclass(frozen=True)
class WorkerAnswer:
    view: View
    changed: bool = False  # False: nothing was done (say so privately, leave the clicked message alone)


class WorkerStack:
    """The remote-control calls worker control makes, each bounded by a timeout."""

    def __init__(self, app: Celery, expected: Callable[[], set[str]],
                 on_sent: Callable[[list[str]], None] | None = None) -> None:
        self.app = app
        self.expected = expected
        # Told which workers a control command went to: their pool and queues may have changed (bot.live).
        self.on_sent = on_sent or (lambda names: None)

    @contextmanager
    def connection(self) -> Iterator[kombu.Connection]:
        with broker_connection(self.app) as conn:
            yield conn

    def ask(self, method: str, destination: list[str] | None = None, *args: Any,
            timeout: float | None = None) -> dict[str, Any]:
        """An inspect command; addressed by name it returns as soon as those workers replied, else it
        waits for the workers we expect (or DISCOVERY_TIMEOUT when we expect none)."""
        expected = self.expected()
        limit = len(destination) if destination else (len(expected) or None)
        timeout = timeout or (REPLY_TIMEOUT if limit else DISCOVERY_TIMEOUT)
        with self.connection() as conn:
            inspector = self.app.control.inspect(destination=destination, timeout=timeout, limit=limit,
                                                 connection=conn)
            answer = getattr(inspector, method)(*args) or {}
        return {str(name): value for name, value in answer.items()}

    def workers(self) -> dict[str, WorkerInfo]:
        """Every answering worker: pool, size, autoscale bounds, consumed queues."""
        stats = self.ask("stats")
        queues = self.ask("active_queues", sorted(stats)) if stats else {}
        return {name: worker_info(name, stats[name], queues.get(name)) for name in sorted(stats)}

    def detail(self, worker: WorkerInfo) -> tuple[WorkerInfo, bool]:
        """One worker with its active and reserved tasks and its limits; and whether it allows pool_restart."""
        only = [worker.name]
        active = self.ask("active", only).get(worker.name) or []
        reserved = self.ask("reserved", only).get(worker.name) or []
        registered = self.ask("registered", only, *rules.LIMIT_ITEMS).get(worker.name) or []
        conf = self.ask("conf", only).get(worker.name) or {}
        detailed = replace(worker, active=active_tasks({worker.name: active})[worker.name],
                           reserved=len(reserved), limits=tuple(rules.task_limits(line) for line in registered))
        return detailed, bool(conf.get("worker_pool_restarts"))

    def registered(self, destination: list[str] | None = None, timeout: float | None = None) -> dict[str, list[str]]:
        return self.ask("registered", destination, *rules.LIMIT_ITEMS, timeout=timeout)

    def send(self, method: str, destination: list[str], **arguments: Any) -> dict[str, dict]:
        """A control command to these workers, waiting for each one's reply (at most REPLY_TIMEOUT)."""
        try:
            with self.connection() as conn:
                replies = getattr(self.app.control, method)(**arguments, destination=destination, reply=True,
                                                            timeout=REPLY_TIMEOUT, limit=len(destination),
                                                            connection=conn)
        finally:
            self.on_sent(destination)
        return rules.by_worker(replies)

    def shutdown(self, destination: list[str]) -> None:
        """Celery's shutdown never replies (the worker raises WorkerShutdown before it could): not waited for."""
        with self.connection() as conn:
            self.app.control.shutdown(destination=destination, connection=conn)

    def answering(self, destination: list[str]) -> set[str]:
        with self.connection() as conn:
            replies = self.app.control.ping(destination=destination, timeout=1.0, limit=len(destination),
                                            connection=conn)
        return set(rules.by_worker(replies))

    def pids(self, destination: list[str]) -> dict[str, set[int]]:
        return {name: set((stats.get("pool") or {}).get("processes") or [])
                for name, stats in self.ask("stats", destination).items()}


def enrich(stack: WorkerStack, snapshot: Snapshot, limits: bool = False) -> Snapshot:
    """The snapshot's answering workers with the queues they consume (and, asked, their limits).

    Not part of every probe: each inspect more per poll is more traffic on every worker's event loop (it
    made an exited pool child linger in the pool list more often, measured). Asked for `/tasks workers`
    and while a pause is on record, by name, each within a short timeout (Slack's 3 s)."""
    names = [w.name for w in snapshot.celery.workers if w.answered]
    if not names:
        return snapshot
    try:
        queues = stack.ask("active_queues", names, timeout=ENRICH_TIMEOUT)
        registered = stack.registered(names, ENRICH_TIMEOUT) if limits else {}
    except BrokerUnreachable:
        return snapshot

    def enriched(worker: WorkerInfo) -> WorkerInfo:
        found = tuple(rules.task_limits(line) for line in registered[worker.name]) \
            if worker.name in registered else worker.limits
        return replace(worker, queues=queue_names(queues.get(worker.name)) if worker.name in queues
                       else worker.queues, limits=found)

    workers = tuple(enriched(w) for w in snapshot.celery.workers)
    return replace(snapshot, celery=replace(snapshot.celery, workers=workers))


def worker_info(name: str, stats: dict[str, Any], queues: Any) -> WorkerInfo:
    return WorkerInfo(name=name, pool=pool_name(stats), concurrency=pool_size(stats), queues=queue_names(queues),
                      autoscale=autoscale_bounds(stats), uptime=stats.get("uptime"))


def resolve_worker(name: str, workers: dict[str, WorkerInfo]) -> str:
    """The worker a name means: itself, or the one worker whose name before "@" it is."""
    name = buttons.resolve(name, workers) or name  # a button's key for a long name
    if name in workers:
        return name
    matches = [w for w in workers if w.split("@", 1)[0] == name]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(list(workers)[:10]) or "none answered"
    raise BadInput(f"No worker named '{rules.echo(name, 60)}' answered (workers: {known}); nothing was done.")


class WorkerControl:
    def __init__(self, settings: Settings, stack: WorkerStack, control: TaskControl, pauses: PauseStore,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.stack = stack
        self.control = control
        self.pauses = pauses
        self.clock = clock

    # --- Reading ---

    def read(self, action: str, worker: str, controls_enabled: bool) -> View:
        try:
            return self._read(action, worker, controls_enabled)
        except BadInput as problem:
            return message_view("opsbot", str(problem), Level.WARN)
        except BrokerUnreachable:
            return message_view("opsbot", "The broker is unreachable, so no worker can be asked.", Level.DOWN)

    def _read(self, action: str, worker: str, controls_enabled: bool) -> View:
        now = self.clock()
        if action == "detail":
            workers = self.stack.workers()
            info, restarts = self.stack.detail(workers[resolve_worker(worker, workers)])
            pauses = queue_pauses(self.pauses.load(), tuple(workers.values()))
            return views.worker_view(info, restarts, pauses, self.settings.queues, controls_enabled, now)
        if action == "registered":
            destination = None
            if worker:
                destination = [resolve_worker(worker, self.stack.workers())]
            return views.registered_view(self.stack.registered(destination))
        return views.held_view(action, self.stack.ask(action), now)

    def with_limits(self, snapshot: Snapshot) -> Snapshot:
        """For `/tasks workers`: each answering worker's consumed queues and rate and time limits in force."""
        return enrich(self.stack, snapshot, limits=True)

    # --- Acting ---

    def act(self, action: str, target: str, worker: str, actor: Any) -> WorkerAnswer:
        outcome, audited_target, view = self._act(action, target, worker, actor)
        self.control.record(actor, action, audited_target or typed_target(action, target, worker), outcome.label,
                            outcome.message)
        if view is None:
            return WorkerAnswer(message_view("opsbot", outcome.message, outcome.level), changed=False)
        return WorkerAnswer(view, changed=outcome.changed)

    def _act(self, action: str, target: str, worker: str, actor: Any
             ) -> tuple[Outcome, str, View | None]:
        refusal = self.control.refusal(actor)
        if refusal:
            return refusal, "", None
        try:
            request = rules.parse_request(action, target, worker)
            workers = self.stack.workers()
            request = self._resolved(request, workers)
            targets, skipped = self._targets(request, workers)
            return self._carry_out(request, workers, targets, skipped, actor)
        except BadInput as problem:
            return Outcome(Level.WARN, str(problem), label="invalid"), "", None
        except BrokerUnreachable:
            return Outcome(Level.DOWN, "The broker is unreachable, so no worker can be told; nothing was done.",
                           label="broker_down"), "", None

    def _resolved(self, request: Request, workers: dict[str, WorkerInfo]) -> Request:
        """The request with full names: a worker typed short ("w1"), a button's key for a long name."""
        worker = resolve_worker(request.worker, workers) if request.worker else ""
        queue = request.queue
        if queue:
            candidates = {*self.settings.queues, *(p.queue for p in self.pauses.load()),
                          *(q for w in workers.values() for q in w.queues or ())}
            queue = buttons.resolve(queue, candidates) or queue
        return replace(request, worker=worker, queue=queue)

    def _targets(self, request: Request, workers: dict[str, WorkerInfo]) -> tuple[list[str], list[WorkerResult]]:
        """The workers to tell, and those named but unable to do it (with the reason)."""
        if request.action in ("ratelimit", "timelimit"):
            registered = self.stack.registered()
            names = sorted(n for n, lines in registered.items()
                           if any(rules.task_limits(line).task == request.task for line in lines))
            if not names:
                raise BadInput(f"No worker has a task named '{request.task}' registered; nothing was changed.")
            return names, []
        if request.action in ("pause", "resume"):
            return self._queue_targets(request, workers), []
        name = request.worker
        info = workers[name]
        restarts = self.stack.detail(info)[1] if request.action == "restart-pool" else None
        reason = rules.unsupported(request.action, info.pool, info.autoscale, restarts)
        if reason:
            return [], [WorkerResult(name, Result.SKIPPED, reason)]
        if request.action == "pool" and (info.concurrency or 0) + request.delta < 1:
            raise BadInput(f"{name} runs {info.concurrency} processes: it cannot shrink by {-request.delta}; "
                           "nothing was done.")
        return [name], []

    def _queue_targets(self, request: Request, workers: dict[str, WorkerInfo]) -> list[str]:
        queue, pauses = request.queue, self.pauses.load()
        consuming = sorted(n for n, w in workers.items() if w.queues and queue in w.queues)
        pause = queue_pauses(pauses, tuple(workers.values())).get(queue)
        paused = sorted(set(pause.workers if pause else ()) & set(workers))
        known = queue in self.settings.queues or consuming or paused
        if not known:
            watched = ", ".join(self.settings.queues)
            raise BadInput(f"'{rules.echo(queue, 60)}' is neither a watched queue ({watched}) nor one a worker "
                           "consumes; nothing was done.")
        named = request.worker
        if request.action == "pause":
            chosen = [named] if named else consuming
            if not chosen or (named and named not in consuming):
                where = named or "any worker"
                raise BadInput(f"{rules.echo(queue, 60)} is not consumed by {where}; nothing was done.")
            return chosen
        if named:
            if named in consuming:
                raise BadInput(f"{named} already consumes {queue}; nothing was done.")
            return [named]
        if not paused:
            shown = rules.echo(queue, 60)
            raise BadInput(f"{shown} is not paused on any worker; to make one consume it, name it: "
                           f"/tasks resume {shown} <worker>. Nothing was done.")
        return paused

    def _carry_out(self, request: Request, workers: dict[str, WorkerInfo], targets: list[str],
                   skipped: list[WorkerResult], actor: Any) -> tuple[Outcome, str, View | None]:
        before = self.stack.pids(targets) if request.action == "restart-pool" and targets else {}
        active = self.stack.detail(workers[targets[0]])[0].active if request.action == "shutdown" else ()
        answers = self._send(request, targets) if targets else {}
        results = [self._checked(request, workers, answers[name], before) for name in targets] + skipped
        now = self.clock()
        self._remember(request, actor.id, results, now)
        label = rules.outcome_label(results)
        headline = views.headline(request, results, actor.mention, now, active)
        level = {"done": Level.OK, "partial": Level.WARN, "unsupported": Level.WARN}.get(label, Level.DOWN)
        changed = any(r.result in (Result.DONE, Result.UNCONFIRMED) for r in results)
        audited = views.audit_target(request, [r.worker for r in results])
        view = views.result_view(headline, level, results, request)
        return Outcome(level, headline, changed, label=label), audited, view

    def _send(self, request: Request, targets: list[str]) -> dict[str, WorkerResult]:
        if request.action == "shutdown":
            self.stack.shutdown(targets)
            return {name: WorkerResult(name, Result.DONE, "shutdown sent") for name in targets}
        method, arguments = command_for(request)
        replies = self.stack.send(method, targets, **arguments)
        return {name: rules.answer_of(name, replies) for name in targets}

    def _checked(self, request: Request, workers: dict[str, WorkerInfo], answer: WorkerResult,
                 before: dict[str, set[int]]) -> WorkerResult:
        """A worker that said yes, checked through inspect: its state must show the change."""
        if answer.result is not Result.DONE:
            return answer
        name = answer.worker
        check = self._check(request, workers[name] if name in workers else WorkerInfo(name), before.get(name, set()))
        deadline = time.monotonic() + VERIFY_SECONDS
        while True:
            shown = check()
            if shown or time.monotonic() >= deadline:
                break
            time.sleep(VERIFY_POLL)
        if shown:
            return WorkerResult(name, Result.DONE, shown)
        return WorkerResult(name, Result.UNCONFIRMED, f"replied \"{answer.detail}\", but after {VERIFY_SECONDS:g} s "
                                                      "its state does not show the change")

    def _check(self, request: Request, info: WorkerInfo, pids: set[int]) -> Callable[[], str]:
        """A look at one worker: "" while the change does not show, else what it shows."""
        name = info.name

        def stats() -> WorkerInfo:
            found = self.stack.ask("stats", [name]).get(name)
            return worker_info(name, found, None) if found else WorkerInfo(name, answered=False)

        def consumes() -> bool | None:
            queues = self.stack.ask("active_queues", [name]).get(name)
            return None if queues is None else any(q.get("name") == request.queue for q in queues)

        def limits() -> rules.TaskLimits | None:
            lines = self.stack.registered([name]).get(name) or []
            return next((t for line in lines if (t := rules.task_limits(line)).task == request.task), None)

        match request.action:
            case "pool":
                size = (info.concurrency or 0) + request.delta
                return lambda: f"pool {info.concurrency} → {size} processes" if stats().concurrency == size else ""
            case "autoscale":
                bounds = (request.minimum, request.maximum)
                return lambda: f"autoscale {bounds[0]} to {bounds[1]}" if stats().autoscale == bounds else ""
            case "pause":
                return lambda: f"no longer consumes {request.queue}" if consumes() is False else ""
            case "resume":
                return lambda: f"consumes {request.queue} again" if consumes() else ""
            case "ratelimit":
                return lambda: (f"rate limit in force: {request.rate or 'none'}"
                                if (t := limits()) is not None and t.rate == request.rate else "")
            case "timelimit":
                return lambda: (rules.limits_text(t) if (t := limits()) is not None
                                and (t.soft, t.hard) == (request.soft, request.hard) else "")
            case "restart-pool":
                # Each pool process restarts when it next looks for work (billiard): some at once, some later.
                def replaced() -> str:
                    now = self.stack.pids([name]).get(name) or set()
                    new = now - pids
                    return f"pool restarting: {len(new)} of {len(now)} processes replaced so far" if new else ""
                return replaced
        # shutdown: it stops answering once it stopped consuming; it exits after its active tasks.
        return lambda: "" if self.stack.answering([name]) else "stopped taking tasks; exits after its active tasks"

    def _remember(self, request: Request, user_id: str, results: list[WorkerResult], now: float) -> None:
        confirmed = [r.worker for r in results if r.result is Result.DONE]
        if request.action == "pause" and confirmed:
            self.pauses.save(request.queue, confirmed, user_id, now)
        elif request.action == "resume" and confirmed:
            self.pauses.clear(request.queue, confirmed)



def typed_target(action: str, target: str, worker: str) -> str:
    """What an attempt that never got far (denied, invalid) was aimed at, for the audit."""
    if action in ("pause", "resume"):
        return f"{target} on {worker}" if worker else target or "(empty)"
    return (target if action in ("ratelimit", "timelimit") else worker) or "(empty)"


def command_for(request: Request) -> tuple[str, dict[str, Any]]:
    """The app.control method and its arguments for a request."""
    match request.action:
        case "pool":
            return ("pool_grow" if request.delta > 0 else "pool_shrink"), {"n": abs(request.delta)}
        case "autoscale":
            return "autoscale", {"max": request.maximum, "min": request.minimum}
        case "pause":
            return "cancel_consumer", {"queue": request.queue}
        case "resume":
            return "add_consumer", {"queue": request.queue}
        case "ratelimit":
            return "rate_limit", {"task_name": request.task, "rate_limit": request.rate}
        case "timelimit":
            return "time_limit", {"task_name": request.task, "soft": request.soft, "hard": request.hard}
    return "pool_restart", {}

