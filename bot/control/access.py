"""Who may terminate and purge, and who may read task details: checked on the server for every
attempt (a button is only a claim).

Admins are the user IDs in `OPSBOT_ADMINS`, the members of the Slack user group
`OPSBOT_ADMIN_GROUP` (cached for a minute), and, with `OPSBOT_WORKSPACE_ADMINS=true`, the
workspace's admins and owners (of this workspace: not a Slack Connect partner's). Viewers are the
user IDs in `OPSBOT_VIEWERS` and the members of `OPSBOT_VIEWER_GROUP`; when either is set, task
details (arguments, results, exceptions) are for viewers and admins only. Slack lookups are injected,
so the policy itself is plain code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

GROUP_CACHE_SECONDS = 60.0


class AccessUnknown(Exception):
    """We could not find out (Slack did not answer); the safe answer is no."""


@dataclass(frozen=True)
class Actor:
    """Who asked: a Slack user, or the operator at the console."""

    id: str
    mention: str  # how to name them in a reply: "<@U123>" in Slack, the login name in a terminal


class Access:
    def __init__(self, admins: tuple[str, ...] = (), admin_group: str | None = None,
                 workspace_admins: bool = False,
                 group_members: Callable[[str], set[str]] | None = None,
                 is_workspace_admin: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 viewers: tuple[str, ...] = (), viewer_group: str | None = None) -> None:
        self.admins = frozenset(admins)
        self.admin_group = admin_group
        self.workspace_admins = workspace_admins
        self.viewers = frozenset(viewers)
        self.viewer_group = viewer_group
        self.group_members = group_members
        self.is_workspace_admin = is_workspace_admin
        self.clock = clock
        self._group_cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.admins or self.admin_group or self.workspace_admins)

    def allows(self, actor: Actor) -> bool:
        """True for an admin. Raises AccessUnknown when Slack could not tell us."""
        if actor.id in self.admins:
            return True
        if self.admin_group and actor.id in self._group(self.admin_group):
            return True
        if self.workspace_admins and self.is_workspace_admin is not None:
            try:
                return self.is_workspace_admin(actor.id)
            except Exception as exc:
                raise AccessUnknown("could not look up the user in Slack") from exc
        return False

    @property
    def viewers_configured(self) -> bool:
        return bool(self.viewers or self.viewer_group)

    def may_view(self, actor: Actor) -> bool:
        """True for anyone while no viewer is configured, else for viewers and admins.
        Raises AccessUnknown when Slack could not tell us."""
        if not self.viewers_configured or actor.id in self.viewers:
            return True
        if self.viewer_group and actor.id in self._group(self.viewer_group):
            return True
        return self.allows(actor)

    def _group(self, group_id: str) -> frozenset[str]:
        with self._lock:
            cached = self._group_cache.get(group_id)
            if cached and self.clock() - cached[0] < GROUP_CACHE_SECONDS:
                return cached[1]
        if self.group_members is None:
            return frozenset()
        try:
            members = frozenset(self.group_members(group_id))
        except Exception as exc:
            raise AccessUnknown("could not read a user group from Slack") from exc
        with self._lock:
            self._group_cache[group_id] = (self.clock(), members)
        return members


NOT_A_VIEWER = ("Task details are for opsbot's viewers and admins only (OPSBOT_VIEWERS, OPSBOT_VIEWER_GROUP); "
                "ask an admin to add you.")
HOW_TO_CONFIGURE = ("Task control is off: no admins are configured. Set OPSBOT_ADMINS (Slack user IDs), "
                    "OPSBOT_ADMIN_GROUP (a user group ID) or OPSBOT_WORKSPACE_ADMINS=true.")

# What an admin may do that others may not, as refusals name it.
CONTROL = "control tasks, queues and workers"
MUTE = "mute and unmute alerts"
AUDIT = "read the task-control audit"


def not_allowed(what: str) -> str:
    """The one wording of a refusal for want of admin rights, naming what was refused."""
    return f"You are not allowed to do that: only opsbot admins can {what}. Nothing was done."
