"""What a hostile case is: data, not code.

Rule kept here: a case names what is sent (a message through an ordinary transaction, or a
byte-level SMTP dialogue), the exact reply it must get (code, and the enhanced status code when
the gateway gives one; ``None`` asserts that it gives none) and how many messages the next hop
may receive because of it. Content is built lazily from the session's PKI (``World``), so that
collection stays instant and keys are made once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.hostile.world import World

CATEGORIES = ("smtp", "mime", "cms", "cert", "payload",
              # the families of the security review (review_cases.py)
              "oracle", "identity", "headers", "exhaustion")
REVIEW_FAMILIES = CATEGORIES[5:]


@dataclass(frozen=True)
class Outcome:
    """One expected reply. ``code`` 0 stands for "the server closed the connection"."""

    code: int
    status: str | None = None

    def matches(self, line: str | None) -> bool:
        if self.code == 0:
            return line is None
        if line is None or not line[:3].isdigit() or int(line[:3]) != self.code:
            return False
        words = line[4:].split(" ", 1)
        enhanced = words[0] if words and _looks_enhanced(words[0]) else None
        return enhanced == self.status

    def __str__(self) -> str:
        if self.code == 0:
            return "closed"
        return f"{self.code} {self.status}" if self.status else str(self.code)


def _looks_enhanced(word: str) -> bool:
    parts = word.split(".")
    return len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in "245"


CLOSED = Outcome(0)


def reply(text: str) -> Outcome:
    """``"550 5.7.7"`` -> Outcome(550, "5.7.7"); ``"503"`` -> Outcome(503, None);
    ``"closed"`` -> CLOSED."""
    if text == "closed":
        return CLOSED
    code, _, status = text.partition(" ")
    return Outcome(int(code), status or None)


@dataclass(frozen=True)
class Exchange:
    """Bytes the client writes at once, and the replies that must follow, in order.

    ``upgrade``: after those replies the client starts TLS on the connection (STARTTLS).
    """

    send: bytes
    expect: tuple[Outcome, ...] = ()
    upgrade: bool = False


def ex(send: bytes, *expect: str | Outcome, upgrade: bool = False) -> Exchange:
    return Exchange(send, tuple(e if isinstance(e, Outcome) else reply(e) for e in expect),
                    upgrade)


Dialogue = Sequence[Exchange]
ContentBuilder = Callable[["World"], bytes]
DialogueBuilder = Callable[["World"], Dialogue]
# Extra checks on what the next hop received because of the case: (world, relayed contents).
RelayCheck = Callable[["World", list[bytes]], None]


@dataclass(frozen=True)
class Case:
    """One hostile input and what the gateway must answer.

    Exactly one of ``content`` (sent through MAIL/RCPT/DATA on a reused TLS session; the reply
    to the final dot is ``outcome``) or ``dialogue`` (a fresh connection; ``tls`` says whether
    the rig does EHLO/STARTTLS/EHLO first; ``outcome`` must be one of its expected replies).
    """

    name: str
    category: str
    outcome: Outcome
    network: str = "apicrypt"  # the listener the case talks to
    content: ContentBuilder | None = None
    dialogue: DialogueBuilder | None = None
    sender: str | None = None  # content cases: default sender of ``network``
    rcpts: tuple[str, ...] = ()  # content cases: default recipient of ``network``
    relays: int = 0  # messages the next hop must receive because of this case
    tls: bool = True
    closes: bool = False  # the dialogue ends with the connection closed (by either side)
    check: RelayCheck | None = None
    xfail: str | None = None  # a known gateway bug: strict xfail with this reason
    tags: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if (self.content is None) == (self.dialogue is None):
            raise ValueError(f"{self.name}: give content or dialogue, not both")
        if self.category not in CATEGORIES:
            raise ValueError(f"{self.name}: unknown category {self.category}")

    @property
    def id(self) -> str:
        return f"{self.category}/{self.name}"


def message_case(category: str, name: str, outcome: str, build: ContentBuilder,
                 **fields: Any) -> Case:
    """A content case; a 250 outcome relays one message unless ``relays`` says otherwise."""
    fields.setdefault("relays", 1 if outcome.startswith("250") else 0)
    return Case(name=name, category=category, outcome=reply(outcome), content=build, **fields)


def dialogue_case(category: str, name: str, outcome: str, build: DialogueBuilder,
                  **fields: Any) -> Case:
    return Case(name=name, category=category, outcome=reply(outcome), dialogue=build, **fields)
