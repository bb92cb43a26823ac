"""What a listener is given and what it hands on: its settings, and one received message.

Rule kept here: a listener's bounds default to the gateway's settings, written once in
``gateway.config.settings`` (never repeated here), and a received message is held by one
reference only (``InboundMessage.release`` drops it once translated).
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import GatewaySettings, NetworkConfig, default_of
from gateway.errors import Reply
from gateway.obs import keyed_pseudonym

_G = functools.partial(default_of, GatewaySettings)  # its field defaults
_N = functools.partial(default_of, NetworkConfig)  # its field defaults


# The first Message-ID field of the header block (folded lines joined), read from at most
# the first 64 KiB: a header block longer than that has none worth tracing.
_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*((?:.*)(?:\r\n[ \t].*)*)")
_HEADER_SCAN = 65536


def message_id_of(content: bytes) -> str | None:
    """The message's Message-ID as written (outer header), or None; for keyed hashing only."""
    head = content[:_HEADER_SCAN].split(b"\r\n\r\n", 1)[0]
    found = _MESSAGE_ID.search(head)
    if found is None:
        return None
    value = b" ".join(found.group(1).split()).decode("ascii", "replace")
    return value or None


@dataclass(frozen=True)
class ListenerSettings:
    """One listener: where it listens, who it is, and its bounds."""

    network: str
    host: str
    port: int  # 0: any free port (tests)
    hostname: str  # EHLO / banner name
    ssl_context: Any  # ssl.SSLContext (server side, see gateway.transport.tls)
    require_client_cert: bool = False
    peer_cert_ok: Callable[[bytes], bool] | None = None  # DER of the client certificate
    # Defaults are GatewaySettings' (written once, in gateway.config.settings).
    max_message_bytes: int = _G("max_message_bytes")
    max_recipients: int = _G("max_recipients")
    command_timeout: float = _G("command_timeout_seconds")
    data_budget: float = _G("data_timeout_seconds")  # for ``process`` (translate + deliver)
    data_transfer_timeout: float = 600.0  # seconds for the client to send the content
    max_sessions: int = _G("max_sessions")
    max_sessions_per_ip: int = _G("max_sessions_per_ip")
    starttls_seconds: float = _G("starttls_seconds")
    session_seconds: float = _G("session_seconds")
    max_idle_commands: int = _G("max_idle_commands")
    # limits.SharedCounts: per-address counts shared by the --workers processes (None: this
    # process's own, as for a single worker)
    shared_ips: Any = None
    rate_limit_per_minute: int = _G("rate_limit_per_minute")  # per sender; 0: no limit
    pseudonym_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    pseudonymise: Callable[[str], str] | None = None  # default: keyed_pseudonym(pseudonym_key)
    clock: Callable[[], float] = time.monotonic
    # PROXY protocol (v1/v2) from a TCP balancer: the real client address comes from its
    # header, which must arrive within ``proxy_timeout`` seconds or the connection is closed.
    # Only for listeners that nothing but the balancer can reach.
    proxy_protocol: bool = False
    proxy_timeout: float = 5.0
    # False: MAIL without STARTTLS is accepted, for Postfix's before-queue proxy (plain SMTP
    # to its filter); config.py allows it on a loopback listen address only.
    require_starttls: bool = _N("require_starttls")
    # counters (metrics): a refusal (stage, error type, reply); a TLS failure (its kind)
    on_refusal: Callable[[str, str, Reply], None] | None = None
    on_tls_failure: Callable[[str], None] | None = None

    def refused(self, stage: str, error: str, reply: Reply) -> None:
        if self.on_refusal is not None:
            self.on_refusal(stage, error, reply)

    def tls_failed(self, kind: str) -> None:
        if self.on_tls_failure is not None:
            self.on_tls_failure(kind)

    def pseudo(self, address: str) -> str:
        return (self.pseudonymise or keyed_pseudonym(self.pseudonym_key))(address)


@dataclass(eq=False)
class InboundMessage:
    """One message as received: what ``process`` gets.

    ``content`` is the only reference to the message once ``process`` has it (the session lets
    go of its copy); ``release`` drops it once translated, so a big message in flight is held
    once (as received, then as translated), never twice.
    """

    network: str  # the network it entered from
    mail_from: str  # as received
    rcpt_tos: tuple[str, ...]  # as received
    routed_rcpts: tuple[str, ...]  # destination addresses (route_recipient), no duplicates
    content: bytes
    peer: str  # client IP
    tls_peer_cert: bytes | None  # DER of the client certificate, if any
    trace_id: str

    def release(self) -> None:
        self.content = b""
