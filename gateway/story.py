"""One message's story, read back from the gateway's JSON log (``gateway trace``).

Rule kept here: the log holds no address and no Message-ID in clear, only keyed tokens
(``obs.keyed_pseudonym``); this module recomputes the token of what the operator asks about
with the same key file (``pseudonym_key_file``), finds the ``message.received`` events that
carry it, and follows their ``trace`` id through every later event. It reads the log as text
and writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# Events whose fields name the message: (field, holds a list of tokens)
_KEYED_FIELDS = (("mail_from", False), ("rcpts", True), ("routed", True), ("message_id", False))


@dataclass
class Story:
    trace: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def received(self) -> dict[str, Any]:
        return next((e for e in self.events if e.get("event") == "message.received"), {})

    def verdict(self) -> str:
        """Delivered (where, with the next hop's queue id), refused (why), or unfinished."""
        done = [e for e in self.events if e.get("event") == "message.done"]
        delivered = [e for e in self.events if e.get("event") == "deliver.result"
                     and e.get("reply") == 250]
        refused = [e for e in self.events if e.get("event") == "translate.refused"]
        answer = (f"answered {done[-1].get('reply')} {done[-1].get('status', '')}".rstrip()
                  if done else "no answer logged")
        if delivered:
            hops = ", ".join(
                f"{e.get('host')}:{e.get('port')}"
                + (f" (queue id {e['queue_id']})" if e.get("queue_id") else "")
                for e in delivered)
            return f"delivered to {hops}; {answer}"
        if refused:
            last = refused[-1]
            return f"refused: {last.get('error')} ({last.get('reason', '')}); {answer}"
        failed = [e for e in self.events if e.get("event") in ("deliver.result", "deliver.failed")]
        if failed:
            last = failed[-1]
            return (f"not delivered: next hop {last.get('host')}:{last.get('port')} "
                    f"{last.get('reply')} ({last.get('cause', '')}); {answer}")
        return answer


def parse_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The JSON events of a log; other lines (a traceback, a console line) are skipped."""
    events = []
    for raw in lines:
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def tokens_for(query: str, pseudonymise: Callable[[str], str]) -> set[str]:
    """The tokens ``query`` may appear as: an address, or a Message-ID with or without its
    angle brackets."""
    query = query.strip()
    bare = query.strip("<>")
    return {pseudonymise(query), pseudonymise(bare), pseudonymise(f"<{bare}>")}


def _names(event: dict[str, Any], tokens: set[str]) -> bool:
    for name, is_list in _KEYED_FIELDS:
        value = event.get(name)
        if is_list and isinstance(value, list) and tokens.intersection(map(str, value)):
            return True
        if not is_list and isinstance(value, str) and value in tokens:
            return True
    return False


def find(events: list[dict[str, Any]], tokens: set[str]) -> list[Story]:
    """Every message a token names, with all the events of its trace, in log order."""
    traces = [e["trace"] for e in events
              if e.get("event") == "message.received" and e.get("trace") and _names(e, tokens)]
    stories = {trace: Story(trace) for trace in dict.fromkeys(traces)}
    for event in events:
        story = stories.get(str(event.get("trace", "")))
        if story is not None:
            story.events.append(event)
    return list(stories.values())


def render(story: Story) -> str:
    first = story.received
    head = (f"trace {story.trace}: received {first.get('timestamp', '?')} on "
            f"{first.get('network', '?')} from {first.get('peer', '?')}, "
            f"{first.get('recipients', '?')} recipient(s), {first.get('size', '?')} bytes")
    lines = [head]
    for event in story.events:
        details = " ".join(f"{k}={event[k]}" for k in (
            "reply", "status", "error", "reason", "host", "port", "queue_id", "said", "cause",
            "duration_ms") if event.get(k) not in (None, ""))
        lines.append(f"  {event.get('timestamp', '')} {event.get('event')} {details}".rstrip())
    lines.append(f"  => {story.verdict()}")
    return "\n".join(lines)
