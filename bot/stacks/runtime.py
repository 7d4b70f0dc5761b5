"""Several stacks in one bot: a `Runtime` per stack for what is the stack's own, one for what they share.

Each stack keeps its own probes, heartbeats and task events, beat watch, task and worker control, and its
own alert engine (its state under its name in the shared row, `bot.stacks.alerting`). Shared by all: the
store, the leadership, Slack (one client, one outbox), the metrics endpoint (a `stack` label) and the
console. The host `StacksRuntime` holds the shared parts and never probes a stack of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bot.alerting.service import AlertService
from bot.alerting.sinks import Sink, SlackSink
from bot.alerting.state import AlertStore, MemoryAlertState
from bot.commands.dispatch import Commands
from bot.config import Settings
from bot.control.access import Access, Actor
from bot.health import TaskHealth
from bot.metrics.collector import Metrics
from bot.runtime import Runtime
from bot.stacks.alerting import StackAlertState
from bot.stacks.commands import StackCommands
from bot.stacks.config import StackConfig
from bot.stacks.metrics import StackedMetrics
from bot.stacks.runner import Member, StackSnapshot, StacksProber
from bot.stacks.series import StackIncidentCharts
from bot.status.snapshot import Snapshot

if TYPE_CHECKING:
    from slack_sdk import WebClient

    from bot.charts.slack import ChartPoster

log = logging.getLogger(__name__)


class StacksRuntime(Runtime):
    def __init__(self, settings: Settings, stacks: tuple[StackConfig, ...]) -> None:
        super().__init__(settings)
        self.record_series = False  # each stack records its own series (bot.stacks.series), the host none
        self.members = {stack.name: Runtime(stack.settings) for stack in stacks}
        self.stacks_prober = StacksProber(
            tuple(Member(name, member.settings, member.take_snapshot) for name, member in self.members.items()),
            settings.probe_timeout)

    # --- What the host does for all ---

    def snapshots(self) -> tuple[StackSnapshot, ...]:
        return self.stacks_prober.snapshots()

    def take_snapshot(self) -> Snapshot:
        """Every stack at once (each feeds its own metrics); the first one's, for callers that want one."""
        return self.snapshots()[0].snapshot

    def _share(self, member: Runtime) -> None:
        member.store = self._store()
        member.leadership = self.leadership
        member.replica = self.replica

    def start_background(self, lead: bool = True) -> None:
        """The election once, for all stacks; each stack follows its own workers and task events."""
        from bot.leader import Leadership

        if lead:
            self.leadership = Leadership(self._store(), self.replica, self._on_leadership).start()
        for member in self.members.values():
            self._share(member)
            member.start_background(lead=False)
            member.leadership = self.leadership

    def _on_leadership(self, leading: bool) -> None:
        if leading:
            for member in self.members.values():
                if member.alerts is not None:
                    member.alerts.poll_soon()

    def _expected_threads(self) -> list[str]:
        alerting = any(member.alerts is not None for member in self.members.values())
        return super()._expected_threads() + (["APScheduler"] if alerting else [])  # the stacks' alert polls

    def _make_metrics(self) -> Metrics:
        for member in self.members.values():
            member.metrics = Metrics(member.settings.poll_seconds, is_leader=self._is_leader)
        return StackedMetrics(self.settings.poll_seconds, {n: m.metrics for n, m in self.members.items()
                                                           if m.metrics is not None}, is_leader=self._is_leader)

    # --- Charts: each stack's own series ---

    def chart_posters(self, client: WebClient) -> dict[str, ChartPoster]:
        from bot.charts.slack import ChartPoster

        return {name: ChartPoster(client, member.charts()) for name, member in self.members.items()}

    def incident_charts(self, client: WebClient) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
        from bot.charts.slack import IncidentCharts

        return StackIncidentCharts({name: IncidentCharts(client, member.charts())
                                    for name, member in self.members.items()}).attach

    # --- Alerts: an engine per stack, one sink ---

    def _stack_alerts(self, name: str, member: Runtime, state: StackAlertState | MemoryAlertState, sink: Sink,
                      shared: bool) -> AlertService:
        extra = TaskHealth(member.settings, member._store, member._retryable).findings if shared else None
        service = AlertService(member.settings, state, member.take_snapshot, sink,
                               is_leader=self._is_leader if shared else (lambda: True), extra_findings=extra)
        service.policy = replace(service.policy, stack=name)  # each incident's id and text name the stack
        member.alerts = service
        service.start()
        return service

    def start_alerts(self, sink: Sink) -> AlertService:
        store = AlertStore(self._store())
        services = [self._stack_alerts(name, member, StackAlertState(store, name), sink, shared=True)
                    for name, member in self.members.items()]
        return services[0]  # the digest is scheduled on one of them: it is posted once

    def start_console_alerts(self, sink: Sink) -> AlertService:
        services = [self._stack_alerts(name, member, MemoryAlertState(), sink, shared=False)
                    for name, member in self.members.items()]
        return services[0]

    # --- Commands ---

    def commands(self, access: Access, announce: Callable[[str], None] | None = None) -> StackCommands:
        members: dict[str, Commands] = {}
        for name, member in self.members.items():
            if member.store is None:  # `opsbot console` without the background: the store is still shared
                self._share(member)
            members[name] = member.commands(access, announce)
        return StackCommands(members, self.stacks_prober, self._notes)

    def console_commands(self, print_line: Callable[[str], None]) -> tuple[StackCommands, Actor]:
        from bot.alerting.sinks import ConsoleSink
        from bot.runtime import console_actor

        operator = console_actor()
        self.start_console_alerts(ConsoleSink(print_line))
        return self.commands(Access(admins=(operator.id,))), operator

    def _store_notes(self) -> list[str]:
        notes = [f"{name}: {member.alerts.muted_note()}" for name, member in self.members.items()
                 if member.alerts is not None and member.alerts.muted_note()]
        return notes + super()._store_notes()  # the host has no alerts of its own: its lines are the replica's

    def _slack_problems(self) -> list[str]:
        sinks = {id(m.alerts.sink): m.alerts.sink for m in self.members.values() if m.alerts is not None}
        return [sink.problem for sink in sinks.values() if isinstance(sink, SlackSink) and sink.problem]

    def close(self) -> None:
        """Each stack's parts first (their history still reaches the shared store), then the shared ones."""
        for member in self.members.values():
            if member.alerts is not None:
                member.alerts.stop()
                member.alerts = None
            member.store, member.leadership = None, None  # the host closes them, once
            member.close()
        self.stacks_prober.close()
        super().close()
