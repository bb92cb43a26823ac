"""A TCP proxy between the gateway's delivery side and its next hop that injects faults.

    python -m bench.faultproxy --listen 127.0.0.1:2588 --upstream 127.0.0.1:12588 \
        [--rate 0.05] [--seed 1] [--stall-seconds 5]

Rule kept here: every fault is one a real next hop or network produces, and each still makes
sense although the delivery is TLS after STARTTLS (the proxy sees ciphertext only):

* at accept, per new connection, with probability ``rate`` (the proxy answers in clear, before
  STARTTLS, without contacting the next hop):
  ``refuse`` (accepted, then reset at once), ``greeting_421`` (greeting is 421, then closed),
  ``ehlo_451`` (EHLO and HELO answered 451), ``starttls_550`` (EHLO offers STARTTLS, STARTTLS
  is answered 550);
* per delivery, with probability ``rate``, decided when the client's current turn (its bytes
  since the server last spoke) passes ``content_threshold`` bytes, which only the DATA content
  does (SMTP commands and the client's TLS handshake flights are smaller):
  ``cut`` (a random part of that read is forwarded, then both sides are reset: the hop never
  sees the end of the content), ``stall`` (nothing more forwarded either way for
  ``stall_seconds``, longer than the gateway's delivery timeout, then reset);
  ``data_421`` / ``data_451`` / ``data_550``: the content is forwarded and the next hop itself
  answers that code to this DATA (``FaultySink``, told through ``replies`` by the port of the
  proxy's own connection to it; after 421 the sink closes the connection, as RFC 5321 says).

Kinds are drawn from a shuffled deck refilled when empty, so that at any rate every kind comes
up about as often as the others; each is counted when it is actually applied.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP, Envelope, Session

CONNECTION_KINDS = ("refuse", "greeting_421", "ehlo_451", "starttls_550")
DELIVERY_KINDS = ("cut", "stall", "data_421", "data_451", "data_550")
ALL_KINDS = (*CONNECTION_KINDS, *DELIVERY_KINDS)
REPLY_OF = {
    "data_421": "421 4.3.2 Sink closing the transmission channel (soak fault)",
    "data_451": "451 4.3.0 Sink local error, try again later (soak fault)",
    "data_550": "550 5.7.1 Sink refuses this message (soak fault)",
}
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


@dataclass
class FaultPlan:
    """When and which fault: a seeded draw per decision point, applied kinds counted."""

    rate: float = 0.05
    seed: int = 1
    kinds: Sequence[str] = ALL_KINDS
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    decisions: collections.Counter[str] = field(default_factory=collections.Counter)
    # the sink's side: proxy-to-sink connection (its local port) -> reply fault for its DATA
    replies: dict[int, str] = field(default_factory=dict)
    # Message-IDs the sink answered a fault to, per kind
    refused: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))

    def __post_init__(self) -> None:
        # One stream per decision point: the n-th connection (or delivery) gets the same draw
        # in every run with this seed, however the two kinds of events interleave.
        self._rngs = {point: random.Random(f"{self.seed}/{point}")
                      for point in ("connection", "delivery", "offsets")}
        self._decks: dict[str, list[str]] = {"connection": [], "delivery": []}

    def draw(self, point: str) -> str | None:
        """A fault kind for this decision point ("connection" or "delivery"), or None."""
        self.decisions[point] += 1
        group = CONNECTION_KINDS if point == "connection" else DELIVERY_KINDS
        choices = [k for k in group if k in self.kinds]
        rng = self._rngs[point]
        if not choices or rng.random() >= self.rate:
            return None
        deck = self._decks[point]
        if not deck:
            deck.extend(choices)
            rng.shuffle(deck)
        return deck.pop()

    def applied(self, kind: str) -> None:
        self.counts[kind] += 1

    def uniform(self, low: int, high: int) -> int:
        return self._rngs["offsets"].randint(low, high)


@dataclass
class _Link:
    """One proxied connection: the size of the client's current turn, and what was decided."""

    turn: int = 0
    decided: bool = False
    upstream_port: int = 0


class FaultProxy:
    """Listens on ``listen``, forwards to ``upstream``, injects faults from ``plan``."""

    def __init__(self, plan: FaultPlan, upstream: tuple[str, int], *,
                 stall_seconds: float = 5.0, content_threshold: int = 4096) -> None:
        self.plan = plan
        self.upstream = upstream
        self.stall_seconds = stall_seconds
        self.content_threshold = content_threshold
        self.connections = 0
        self.largest_small_turn = 0  # the biggest client turn below the threshold (a check)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            pass  # the faults themselves end connections this way
        except asyncio.CancelledError:
            # close() ends it; re-raising would make the stream callback of Python 3.11 log
            # the cancellation as an error
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        kind = self.plan.draw("connection")
        if kind == "refuse":
            self.plan.applied(kind)
            return  # _accept resets it
        if kind is not None:
            self.plan.applied(kind)
            await _fake_next_hop(kind, reader, writer)
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        link = _Link(upstream_port=int(up_writer.get_extra_info("sockname")[1]))
        try:
            pumps = [asyncio.create_task(self._client_to_server(link, reader, up_writer)),
                     asyncio.create_task(self._server_to_client(link, up_reader, writer))]
            try:
                _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            if pending:  # one side ended: let the other's last bytes out, then close
                with contextlib.suppress(Exception):
                    writer.close()
                    up_writer.close()
                    await asyncio.wait_for(writer.wait_closed(), 1.0)
        finally:
            up_writer.transport.abort()
            self.plan.replies.pop(link.upstream_port, None)

    async def _client_to_server(self, link: _Link, reader: asyncio.StreamReader,
                                up: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            before = link.turn
            link.turn += len(chunk)
            if not link.decided and link.turn >= self.content_threshold:
                link.decided = True
                kind = self.plan.draw("delivery")
                if kind == "cut":
                    self.plan.applied(kind)
                    # Forward part of this read, never its last byte: the end of the content
                    # (the final dot's TLS record) does not reach the hop.
                    keep = self.plan.uniform(max(0, self.content_threshold - before - 1),
                                             len(chunk) - 1)
                    up.write(chunk[:keep])
                    await up.drain()
                    up.transport.abort()
                    return
                if kind == "stall":
                    self.plan.applied(kind)
                    await asyncio.sleep(self.stall_seconds)
                    up.transport.abort()
                    return
                if kind is not None:  # the sink answers it (and counts it)
                    self.plan.replies[link.upstream_port] = kind
            up.write(chunk)
            await up.drain()

    async def _server_to_client(self, link: _Link, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            if not link.decided:
                self.largest_small_turn = max(self.largest_small_turn, link.turn)
            link.turn = 0  # the server spoke: the client's next bytes are a new turn
            link.decided = False
            writer.write(chunk)
            await writer.drain()


async def _fake_next_hop(kind: str, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
    """Speak plain SMTP up to the fault (the hop's side of the dialogue, before STARTTLS)."""
    if kind == "greeting_421":
        writer.write(b"421 4.3.2 next hop busy, try again later (soak fault)\r\n")
        await writer.drain()
        return
    writer.write(b"220 soak-proxy ESMTP\r\n")
    await writer.drain()
    for _ in range(10):  # a client gives up after a few commands; bounded either way
        line = await asyncio.wait_for(reader.readline(), 10.0)
        if not line:
            return
        verb = line.split(maxsplit=1)[0].upper() if line.strip() else b""
        if verb == b"QUIT":
            writer.write(b"221 2.0.0 bye\r\n")
            await writer.drain()
            return
        if kind == "ehlo_451":
            reply = b"451 4.3.0 next hop not ready (soak fault)\r\n"
        elif verb == b"EHLO":
            reply = b"250-soak-proxy\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
        elif verb == b"STARTTLS":
            reply = b"550 5.7.0 TLS not available (soak fault)\r\n"
        else:
            reply = b"503 5.5.1 bad sequence of commands\r\n"
        writer.write(reply)
        await writer.drain()


def message_id(content: bytes) -> str | None:
    """The Message-ID of a message's header block (None without one)."""
    head = content.partition(b"\r\n\r\n")[0]
    match = _MESSAGE_ID.search(head)
    return match.group(1).decode("ascii", "replace") if match else None


@dataclass
class FaultySink:
    """The next hop (an aiosmtpd handler): keeps Message-IDs of what it accepted, and answers a
    reply fault to the DATA the proxy marked for it."""

    plan: FaultPlan
    received: collections.Counter[str] = field(default_factory=collections.Counter)
    accepted: int = 0
    without_id: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = bytes(envelope.original_content or b"")
        ident = message_id(content)
        peer: object = session.peer  # (host, port) of the proxy's connection to us
        assert isinstance(peer, tuple)
        kind = self.plan.replies.pop(int(peer[1]), None)
        if kind is not None:
            self.plan.applied(kind)
            self.plan.refused[kind].append(ident or "")
            if kind == "data_421":  # 421 means closing: the reply goes out, then the close
                transport = server.transport
                assert transport is not None
                asyncio.get_running_loop().call_soon(transport.close)
            return REPLY_OF[kind]
        self.accepted += 1
        if ident is None:
            self.without_id += 1
        else:
            self.received[ident] += 1
        return f"250 2.0.0 queued as S{self.accepted}"


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


async def _main(args: argparse.Namespace) -> None:
    plan = FaultPlan(args.rate, args.seed, kinds=(*CONNECTION_KINDS, "cut", "stall"))
    proxy = FaultProxy(plan, _hostport(args.upstream), stall_seconds=args.stall_seconds)
    await proxy.start(*_hostport(args.listen))
    try:
        while True:
            await asyncio.sleep(10)
            print(f"connections {proxy.connections}, faults {dict(plan.counts)}", flush=True)
    finally:
        await proxy.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT")
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stall-seconds", type=float, default=5.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
