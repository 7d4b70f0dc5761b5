"""Links from what the bot shows to the pages people already use: Flower's task and worker pages
(`FLOWER_PUBLIC_URL`) and the team's runbook (`OPSBOT_RUNBOOK_URL`, `{check}` replaced).

Views name what an item refers to (`Ref`: ("task", id), ("worker", name), ("runbook", check)); only
the Slack renderer turns a reference into a URL, and only when the setting is there. The bases are
validated at start-up (http(s), no credentials, none of Slack's markup characters), and every value
put into them is percent-encoded, so a hostile task id or worker name cannot break out of the link.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

Ref = tuple[str, str]  # (kind, key)


@dataclass(frozen=True)
class Links:
    flower: str | None = None  # Flower's public base URL
    runbook: str | None = None  # a URL template; "{check}" becomes the check's name

    @classmethod
    def from_settings(cls, settings: object) -> Links:
        flower = getattr(settings, "flower_public_url", None)
        return cls(flower.rstrip("/") if flower else None, getattr(settings, "runbook_url", None))

    def url(self, ref: Ref | None) -> str | None:
        if ref is None:
            return None
        kind, key = ref
        value = quote(key, safe="")
        if kind == "task" and self.flower:
            return f"{self.flower}/task/{value}"
        if kind == "worker" and self.flower:
            return f"{self.flower}/worker/{value}"
        if kind == "runbook" and self.runbook:
            return self.runbook.replace("{check}", value)
        return None


NO_LINKS = Links()
