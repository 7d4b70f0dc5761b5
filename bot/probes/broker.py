"""The broker probes: exact queue counts from RabbitMQ (AMQP, plus the management API's details) or
from Redis (the lengths of each queue's lists)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import amqp.exceptions
import kombu
import redis
import requests

from bot.config import Settings, strip_credentials
from bot.probes.failures import problem_from, target_of
from bot.redact import redact_url
from bot.status.snapshot import BrokerStatus, Failure, QueueInfo

# Celery's Redis transport keeps each priority level in its own list: "celery", "celery\x06\x163", ...
REDIS_PRIORITY_SEPARATOR = "\x06\x16"
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)


def amqp_connection(broker_url: str, timeout: float) -> kombu.Connection:
    """A kombu connection whose connect, read and write all give up after `timeout`."""
    return kombu.Connection(
        broker_url,
        connect_timeout=timeout,
        transport_options={"read_timeout": timeout, "write_timeout": timeout},
    )


def amqp_queue_counts(broker_url: str, names: Iterable[str], timeout: float) -> list[QueueInfo]:
    """Exact ready and consumer counts from a passive declare (the management API lags by ~5 s)."""
    queues = []
    with amqp_connection(broker_url, timeout) as conn:
        conn.ensure_connection(max_retries=0)  # kombu's default retries would outlast the deadline
        for name in names:
            channel = conn.channel()
            try:
                _, ready, consumers = channel.queue_declare(queue=name, passive=True)
                queues.append(QueueInfo(name=name, ready=ready, consumers=consumers))
            except amqp.exceptions.NotFound:
                # A queue nobody declared yet: no worker ever consumed it, nothing was ever sent.
                queues.append(QueueInfo(name=name, ready=0, consumers=0, exists=False))
            finally:
                if channel.is_open:
                    channel.close()
    return queues


class ManagementApi:
    """The RabbitMQ management HTTP API: consumers, unacked messages and resource alarms."""

    def __init__(self, settings: Settings, session: requests.Session) -> None:
        self.base = strip_credentials(settings.rabbitmq_management_url).rstrip("/")
        self.auth = settings.management_credentials()
        self.vhost = urlsplit(settings.broker_url).path[1:] or "/"
        self.session = session

    def get(self, path: str, timeout: float) -> Any:
        response = self.session.get(f"{self.base}{path}", auth=self.auth, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def details(self, queues: list[QueueInfo], timeout: float) -> tuple[list[QueueInfo], tuple[str, ...]]:
        """Fill in unacked counts and read alarms; the exact counts from AMQP are kept."""
        vhost = requests.utils.quote(self.vhost, safe="")
        enriched = []
        for queue in queues:
            if not queue.exists:
                enriched.append(queue)
                continue
            info = self.get(f"/api/queues/{vhost}/{requests.utils.quote(queue.name, safe='')}", timeout)
            enriched.append(QueueInfo(name=queue.name, ready=queue.ready, consumers=queue.consumers,
                                      unacked=info.get("messages_unacknowledged")))
        return enriched, self.alarms(timeout)

    def alarms(self, timeout: float) -> tuple[str, ...]:
        found = []
        for node in self.get("/api/nodes", timeout):
            name = node.get("name", "?")
            if node.get("mem_alarm"):
                found.append(f"memory alarm on {name}")
            if node.get("disk_free_alarm"):
                found.append(f"disk space alarm on {name}")
        return tuple(found)


def probe_rabbitmq(settings: Settings, session: requests.Session, timeout: float) -> BrokerStatus:
    target = target_of(settings.broker_url)
    try:
        queues = amqp_queue_counts(settings.broker_url, settings.queues, timeout)
    except Exception as exc:  # any failure to read the broker is a state to show, not a crash
        return BrokerStatus(kind="rabbitmq", target=target, problem=problem_from(exc, target))
    api = ManagementApi(settings, session)
    try:
        queues, alarms = api.details(queues, timeout)
    except Exception as exc:
        problem = problem_from(exc, redact_url(api.base))
        if problem.kind is Failure.REFUSED:
            # AMQP answers but HTTP does not: almost always the plugin is simply not enabled.
            problem = replace(problem, kind=Failure.NO_MANAGEMENT)
        return BrokerStatus(kind="rabbitmq", target=target, queues=tuple(queues),
                            management_problem=problem)
    return BrokerStatus(kind="rabbitmq", target=target, queues=tuple(queues), alarms=alarms)


def redis_queue_keys(name: str) -> list[str]:
    return [name if step == 0 else f"{name}{REDIS_PRIORITY_SEPARATOR}{step}" for step in REDIS_PRIORITY_STEPS]


def redis_client(broker_url: str, timeout: float) -> redis.Redis:
    """A Redis client whose connect and every command give up after `timeout`."""
    return redis.Redis.from_url(broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)


def probe_redis(settings: Settings, timeout: float) -> BrokerStatus:
    target = target_of(settings.broker_url)
    client = redis_client(settings.broker_url, timeout)
    try:
        pipe = client.pipeline(transaction=False)
        for name in settings.queues:
            for key in redis_queue_keys(name):
                pipe.llen(key)
        lengths = pipe.execute()
    except Exception as exc:
        return BrokerStatus(kind="redis", target=target, problem=problem_from(exc, target))
    finally:
        client.close()
    per_queue = len(REDIS_PRIORITY_STEPS)
    queues = tuple(
        QueueInfo(name=name, ready=sum(lengths[i * per_queue:(i + 1) * per_queue]))
        for i, name in enumerate(settings.queues)
    )
    return BrokerStatus(kind="redis", target=target, queues=queues)
