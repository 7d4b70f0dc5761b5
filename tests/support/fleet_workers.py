"""A synthetic Celery fleet for the benchmarks: N fake workers answering remote control on a real broker.

Each fake worker is a kombu pidbox `Node`, made the way a Celery worker makes its own
(celery/worker/pidbox.py: `app.control.mailbox.Node(hostname, state=..., handlers=...)`, then
`node.listen(callback=...)`): an exclusive `<hostname>.celery.pidbox` queue bound to the
`celery.pidbox` fanout exchange. So the bot's broadcast `inspect active` reaches every node, and each
node replies on the reply exchange with its own hostname, through the app's producer pool, as a worker
does. Handlers: ping, active, reserved, stats and revoke (terminate=True takes the task off `active`
and replaces its pool process, as a prefork worker does), plus scheduled, revoked, registered,
active_queues, query_task and clock for tools such as Flower.

A handful of processes host the nodes: each process has one connection and one channel with one
consumer per node, and drains it in its main thread. With heartbeats on, a thread of each process,
on a connection of its own, sends worker-online for each of its nodes, then worker-heartbeat every
2 s (each node at its own phase in the 2 s, as independent workers would be), and worker-offline
when the fleet stops: one `EventDispatcher` per hostname, with Celery's fields (freq, active,
processed, loadavg, sw_ident/sw_ver/sw_sys), as a worker's `Heart` sends them.
`FleetSpec.without_heartbeat` leaves the last ones silent, as `celery worker --without-heartbeat` would.

Payloads follow Celery 5's: `active` and `reserved` are lists of `Request.info()` dicts (id, name,
args, kwargs, type, hostname, time_start, acknowledged, delivery_info, worker_pid); `stats` has
total, pid, clock, uptime, pool (prefork: implementation, max-concurrency, processes, ...), broker,
prefetch_count and rusage. Hostnames look like Kubernetes pods (`celery@orders-worker-<hash>-<id>`),
the usual length in a real deployment.

On its own, for a look with `celery inspect`: `python -m tests.support.fleet_workers --broker amqp://... --count 20`
(until Ctrl-C); `tests.support.fleet.Fleet` starts such processes for the benchmarks.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import logging
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery

HEARTBEAT_SECONDS = 2.0  # celery.worker.heartbeat.Heart's default interval
ONLINE_PER_SECOND = 100  # fake workers of one process coming online per second (see send_heartbeats)
DEPLOYMENTS = ("orders-worker", "billing-worker", "reports-worker", "emails-worker", "media-worker")
TASKS = {
    "orders-worker": ("orders.tasks.process_order", "orders.tasks.reserve_stock"),
    "billing-worker": ("billing.tasks.charge_invoice", "billing.tasks.sync_ledger"),
    "reports-worker": ("reports.tasks.build_monthly_report", "reports.tasks.export_csv"),
    "emails-worker": ("emails.tasks.send_digest", "emails.tasks.send_receipt"),
    "media-worker": ("media.tasks.transcode_video", "media.tasks.make_thumbnails"),
}
QUEUE = "celery"

log = logging.getLogger("tests.support.fleet_workers")


# --------------------------------------------------------------------------- names and payloads


def _digest(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()


def hostname(index: int) -> str:
    """Fake worker `index`'s node name, like a Kubernetes pod's: celery@orders-worker-7f9c6d8b5d-x2k9q."""
    deployment = DEPLOYMENTS[index % len(DEPLOYMENTS)]
    digest = _digest("fleet", index)
    replica_set = digest[:10]
    pod = "".join("bcdfghjklmnpqrstvwxz2456789"[int(digest[10 + 2 * i: 12 + 2 * i], 16) % 27] for i in range(5))
    return f"celery@{deployment}-{replica_set}-{pod}"


def hostnames(count: int, first: int = 0) -> list[str]:
    return [hostname(i) for i in range(first, first + count)]


class FakeWorker:
    """What one worker would say about itself; the `state` its pidbox handlers get."""

    def __init__(self, index: int, tasks: int, reserved: int, concurrency: int) -> None:
        self.index = index
        self.hostname = hostname(index)
        self.rng = random.Random(index)
        self.deployment = DEPLOYMENTS[index % len(DEPLOYMENTS)]
        self.task_names = TASKS[self.deployment]
        now = time.time()
        self.pid = self.rng.randint(7, 400)  # the worker's main process in its container
        self.processes = [self.pid + 1 + i for i in range(concurrency)]
        self.next_pid = self.processes[-1] + 1
        self.started_at = now - self.rng.uniform(600, 7 * 86400)
        self.concurrency = concurrency
        self.totals = {name: self.rng.randint(1_000, 500_000) for name in self.task_names}
        self.revoked: set[str] = set()
        # Task events the pidbox thread produced, for the heartbeat thread (the one with the dispatchers) to send.
        self.pending: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self.active = [self._request(slot, now, started=True) for slot in range(tasks)]
        self.reserved = [self._request(None, now, started=False) for _ in range(reserved)]
        self.rusage = {"utime": round(self.rng.uniform(100, 5000), 3), "stime": round(self.rng.uniform(10, 500), 3),
                       "maxrss": self.rng.randint(80_000, 400_000), "ixrss": 0, "idrss": 0, "isrss": 0,
                       "minflt": self.rng.randint(10_000, 900_000), "majflt": 0, "nswap": 0, "inblock": 0,
                       "oublock": self.rng.randint(0, 10_000), "msgsnd": 0, "msgrcv": 0, "nsignals": 0,
                       "nvcsw": self.rng.randint(10_000, 900_000), "nivcsw": self.rng.randint(100, 90_000)}

    def _request(self, slot: int | None, now: float, started: bool) -> dict[str, Any]:
        name = self.rng.choice(self.task_names)
        order = self.rng.randint(100_000, 9_999_999)
        customer = f"cus_{_digest(self.index, order)[:14]}"
        return {
            "id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "name": name,
            "args": [order, customer],
            "kwargs": {"region": self.rng.choice(("eu-west-1", "us-east-1", "ap-south-1")),
                       "attempt": self.rng.randint(1, 3), "dry_run": False},
            "type": name,
            "hostname": self.hostname,
            "time_start": now - self.rng.uniform(1, 1800) if started else None,
            "acknowledged": started,
            "delivery_info": {"exchange": "", "routing_key": QUEUE, "priority": 0, "redelivered": False},
            "worker_pid": self.processes[slot] if started and slot is not None else None,
        }

    def task_events(self) -> list[tuple[str, dict[str, Any]]]:
        """task-received for every task it holds, task-started for the active ones, with Celery's fields."""
        events = []
        for task in self.active + self.reserved:
            events.append(("task-received", {
                "uuid": task["id"], "name": task["name"], "args": repr(task["args"]), "kwargs": repr(task["kwargs"]),
                "root_id": task["id"], "parent_id": None, "retries": 0, "eta": None, "expires": None}))
            if task["time_start"] is not None:
                # The dispatcher sets `pid` (the worker's own, as Celery's does); the pool child's is not in it.
                events.append(("task-started", {"uuid": task["id"], "timestamp": task["time_start"]}))
        return events

    def processed(self) -> int:
        return sum(self.totals.values())

    def loadavg(self) -> list[float]:
        base = self.rng.uniform(0.2, 3.5)
        return [round(base * f, 2) for f in (1.0, 0.95, 0.9)]

    def stats(self) -> dict[str, Any]:
        return {
            "total": dict(self.totals),
            "pid": self.pid,
            "clock": str(int(time.time() - self.started_at)),
            "uptime": int(time.time() - self.started_at),
            "pool": {
                "implementation": "celery.concurrency.prefork:TaskPool",
                "max-concurrency": self.concurrency,
                "processes": list(self.processes),
                "max-tasks-per-child": "N/A",
                "put-guarded-by-semaphore": False,
                "timeouts": [0, 0],
                "writes": {"total": self.processed(), "avg": f"{100 / self.concurrency:.2f}%",
                           "all": ", ".join(f"{100 / self.concurrency:.2f}%" for _ in self.processes),
                           "raw": ", ".join(str(self.processed() // self.concurrency) for _ in self.processes),
                           "strategy": "fair", "inqueues": {"total": self.concurrency, "active": len(self.active)}},
            },
            "broker": {"hostname": "rabbitmq.internal", "userid": "celery", "virtual_host": "/", "port": 5672,
                       "insist": False, "ssl": False, "transport": "amqp", "connect_timeout": 4,
                       "transport_options": {}, "login_method": "PLAIN", "uri_prefix": None, "heartbeat": 120.0,
                       "failover_strategy": "round-robin", "alternates": []},
            "prefetch_count": self.concurrency * 4,
            "rusage": dict(self.rusage),
        }

    def revoke(self, task_ids: set[str], terminate: bool) -> None:
        self.revoked |= task_ids
        if not terminate:
            return
        for task in [t for t in self.active if t["id"] in task_ids]:
            self.pending.append(("task-revoked", {"uuid": task["id"], "terminated": True, "signum": "15",
                                                  "expired": False}))
            self.active.remove(task)
            if task["worker_pid"] in self.processes:  # the pool replaces the killed child
                self.processes[self.processes.index(task["worker_pid"])] = self.next_pid
                self.next_pid += 1


# --------------------------------------------------------------------------- pidbox handlers


def _ping(state: FakeWorker, **kwargs: Any) -> dict[str, str]:
    return {"ok": "pong"}


def _active(state: FakeWorker, safe: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
    return state.active


def _reserved(state: FakeWorker, **kwargs: Any) -> list[dict[str, Any]]:
    return state.reserved


def _stats(state: FakeWorker, **kwargs: Any) -> dict[str, Any]:
    return state.stats()


def _revoke(state: FakeWorker, task_id: str | list[str], terminate: bool = False, signal: str | None = None,
            **kwargs: Any) -> dict[str, str]:
    ids = {task_id} if isinstance(task_id, str) else set(task_id or ())
    state.revoke(ids, bool(terminate))
    return {"ok": f"tasks {', '.join(sorted(ids))} flagged as revoked"}


def _scheduled(state: FakeWorker, **kwargs: Any) -> list[dict[str, Any]]:
    return []


def _revoked(state: FakeWorker, **kwargs: Any) -> list[str]:
    return sorted(state.revoked)


def _registered(state: FakeWorker, **kwargs: Any) -> list[str]:
    return sorted(state.task_names)


def _active_queues(state: FakeWorker, **kwargs: Any) -> list[dict[str, Any]]:
    return [{"name": QUEUE, "exchange": {"name": QUEUE, "type": "direct", "durable": True},
             "routing_key": QUEUE, "durable": True, "exclusive": False, "auto_delete": False,
             "no_ack": False, "alias": None, "queue_arguments": None, "binding_arguments": None,
             "consumer_arguments": None, "bindings": [], "max_priority": None, "expires": None,
             "message_ttl": None, "max_length": None, "max_length_bytes": None}]


def _query_task(state: FakeWorker, ids: str | list[str] = (), **kwargs: Any) -> dict[str, Any]:
    wanted = {ids} if isinstance(ids, str) else set(ids)
    found = {t["id"]: ["active", t] for t in state.active if t["id"] in wanted}
    found.update({t["id"]: ["reserved", t] for t in state.reserved if t["id"] in wanted})
    return found


def _clock(state: FakeWorker, **kwargs: Any) -> dict[str, int]:
    return {"clock": int(time.time() - state.started_at)}


HANDLERS: dict[str, Callable[..., Any]] = {
    "ping": _ping, "active": _active, "reserved": _reserved, "stats": _stats, "revoke": _revoke,
    "scheduled": _scheduled, "revoked": _revoked, "registered": _registered,
    "active_queues": _active_queues, "query_task": _query_task, "clock": _clock,
}


# --------------------------------------------------------------------------- one fleet process


def fleet_app(broker_url: str) -> Celery:
    app = Celery("fleet", broker=broker_url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
    return app


def send_heartbeats(app: Celery, workers: list[FakeWorker], stopped: threading.Event,
                    task_events: bool = True) -> None:
    """worker-online (then, with `task_events`, task-received and task-started for the tasks each worker
    holds), worker-heartbeat every 2 s (phases spread over the 2 s), worker-offline at the end.

    Workers come online ONLINE_PER_SECOND a second, not all at once: a fleet of 1,000 workers with 10
    tasks each would otherwise publish 22,000 task events in one burst, which no real fleet does (its
    tasks started over time) and which only measures how long the broker and the listeners take to drain it.
    """
    from celery.worker.state import SOFTWARE_INFO

    def fields(worker: FakeWorker) -> dict[str, Any]:
        return {"freq": HEARTBEAT_SECONDS, "active": len(worker.active), "processed": worker.processed(),
                "loadavg": worker.loadavg(), **SOFTWARE_INFO}

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=5)
        groups = ["worker", "task"] if task_events else ["worker"]
        dispatchers = [app.events.Dispatcher(conn, hostname=w.hostname, groups=groups) for w in workers]
        step = HEARTBEAT_SECONDS / max(1, len(workers))
        started = time.monotonic()
        beat = online = 0
        while not stopped.is_set():
            elapsed = time.monotonic() - started
            while online < len(workers) and online <= elapsed * ONLINE_PER_SECOND:
                dispatchers[online].send("worker-online", **fields(workers[online]))
                for kind, event in workers[online].task_events():  # as a worker with -E would have sent them
                    dispatchers[online].send(kind, **event)
                online += 1
            # Worker k beats at started + k * step + n * 2 s, once online: send every beat that is due.
            due = int(elapsed / step)
            while beat < due:
                k = beat % len(workers)
                while k < online and workers[k].pending:  # task-revoked after a terminate, before the next count
                    kind, event = workers[k].pending.popleft()
                    dispatchers[k].send(kind, **event)
                if k < online:
                    dispatchers[k].send("worker-heartbeat", **fields(workers[k]))
                beat += 1
            stopped.wait(0.05)
        for dispatcher, worker in zip(dispatchers[:online], workers, strict=False):
            with contextlib.suppress(Exception):
                dispatcher.send("worker-offline", **fields(worker))
        for dispatcher in dispatchers:
            with contextlib.suppress(Exception):
                dispatcher.close()


def serve(broker_url: str, first: int, count: int, tasks: int, reserved: int, concurrency: int,
          heartbeats: bool, silent_from: int | None = None, task_events: bool = True) -> None:
    """Host fake workers first..first+count-1 until SIGTERM or SIGINT.

    Workers numbered `silent_from` and up send no events, like `celery worker --without-heartbeat`.
    """
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    app = fleet_app(broker_url)
    workers = [FakeWorker(i, tasks, reserved, concurrency) for i in range(first, first + count)]
    forward_clock = app.clock.forward

    def on_message(node: Any) -> Callable[[dict, Any], None]:
        def handle(body: dict, message: Any) -> None:  # as celery.worker.pidbox.Pidbox.on_message
            forward_clock()
            try:
                node.handle_message(body, message)
            except Exception:
                log.exception("control command failed on %s", node.hostname)
        return handle

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=5)
        channel = conn.channel()
        consumers = []
        for worker in workers:
            node = app.control.mailbox.Node(worker.hostname, state=worker, handlers=HANDLERS, channel=channel)
            consumers.append(node.listen(callback=on_message(node)))
        beats = None
        beating = [w for w in workers if silent_from is None or w.index < silent_from]
        if heartbeats and beating:
            beats = threading.Thread(target=send_heartbeats, args=(app, beating, stopped, task_events), daemon=True,
                                     name="heartbeats")
            beats.start()
        print(f"fleet process {os.getpid()}: {count} workers from #{first} listening", flush=True)
        while not stopped.is_set():
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:  # socket.timeout: nothing arrived within the half second
                continue
        if beats is not None:
            beats.join(timeout=10)
        for consumer in consumers:
            with contextlib.suppress(Exception):
                consumer.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.fleet_workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True, help="AMQP URL of the broker")
    parser.add_argument("--first", type=int, default=0, help="index of the first fake worker (default 0)")
    parser.add_argument("--count", type=int, default=10, help="fake workers in this process (default 10)")
    parser.add_argument("--tasks", type=int, default=10, help="active tasks per worker (default 10)")
    parser.add_argument("--reserved", type=int, default=2, help="reserved tasks per worker (default 2)")
    parser.add_argument("--concurrency", type=int, default=None, help="pool size (default: --tasks)")
    parser.add_argument("--no-heartbeats", action="store_true", help="send no worker events")
    parser.add_argument("--no-task-events", action="store_true", help="send worker events only (no -E)")
    parser.add_argument("--silent-from", type=int, default=None, metavar="INDEX",
                        help="workers from this index on send no worker events (--without-heartbeat)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(args.broker, args.first, args.count, args.tasks, args.reserved, args.concurrency or max(1, args.tasks),
          not args.no_heartbeats, args.silent_from, not args.no_task_events)


if __name__ == "__main__":
    main()
