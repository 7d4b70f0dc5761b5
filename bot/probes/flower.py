"""The Flower probe: /healthcheck, then one authenticated API call to check opsbot's credentials."""

from __future__ import annotations

import requests

from bot.config import Settings, http_endpoint
from bot.probes.failures import problem_from
from bot.redact import redact_url
from bot.status.snapshot import Failure, FlowerStatus, Problem


def probe_flower(settings: Settings, session: requests.Session, timeout: float) -> FlowerStatus:
    base, auth = http_endpoint(settings.flower_url)
    target = redact_url(base)
    try:
        response = session.get(f"{base}/healthcheck", auth=auth, timeout=timeout)
        response.raise_for_status()
        if response.text.strip() != "OK":
            return FlowerStatus(target=target, problem=Problem(
                Failure.UNEXPECTED, target, f"/healthcheck answered {response.text[:40]!r}"))
        # /healthcheck is open to all; the API is what needs our credentials, so check those too.
        session.get(f"{base}/api/tasks", params={"limit": 1}, auth=auth, timeout=timeout).raise_for_status()
    except Exception as exc:
        return FlowerStatus(target=target, problem=problem_from(exc, target))
    return FlowerStatus(target=target)
