"""IMAP ingress: relay the messages of a mailbox, exactly once across several gateway instances.

Rule kept here: a message leaves the source mailbox only after the next hop accepted it (or,
for a permanent failure, after the DSN to its sender was itself accepted, and then it goes to
the ``rejected`` folder, not away). Nothing is stored by the gateway: while a message is being
relayed it lives on the IMAP server, in the processing folder. Like the SMTP listener, the
poller decides nothing about mail: routing, translation and delivery are injected callables.

Claim, deliver, remove -- and the lease:

1. **Claim** = ``CREATE <lock_folder>/claim-<uidvalidity>-<uid>``, ``NOOP``, ``UID MOVE uid
   <processing>``, ``DELETE`` of the lock. Measured on Dovecot 2.3/Maildir: two sessions'
   concurrent ``UID MOVE`` of one message *both* succeed (48 of 50 tries), and so do two
   ``UNCHANGEDSINCE`` stores (no compare-and-set); ``CREATE`` of one folder name succeeds
   for one session only (a mkdir). So the lock folder makes the MOVE one instance's; the
   NOOP makes that session see every MOVE finished before the lock was taken (otherwise a
   stale session can still copy a moved message). The MOVE's ``COPYUID`` gives the claim's
   UID in the processing folder. Candidates: a random sample of the oldest few.
2. **Deliver**: ``UID FETCH (BODY.PEEK[])`` (size checked first), envelope from the headers
   (sender = the one From address, ``check_sender``; recipients = the To/Cc addresses that
   ``route_recipient`` accepts; none: permanent failure), then ``process`` (translate and
   deliver, as for SMTP), bounded by a budget of at most half the lease.
3. **Remove**: 2xx: ``UID STORE +FLAGS.SILENT (\\Deleted)`` then ``UID EXPUNGE`` (UIDPLUS) of that
   UID only. 4xx: ``UID MOVE`` back to the inbox (it gets a new, highest UID: the end of the
   queue) and this poller backs off exponentially before claiming again. 5xx: a DSN (RFC 3464)
   sealed for the sender goes through the source network's relay; once accepted, ``UID MOVE``
   to the rejected folder. A DSN that is deferred requeues the original; one that is impossible
   (no usable certificate for the sender, or the relay refuses it) is logged and the original
   still goes to ``rejected`` (kept on the server, never deleted).

**Lease**: each instance sweeps the processing folder every ``min(poll, lease/4)`` seconds and
remembers, per UID, the monotonic time at which *it* first saw the UID there. A UID that it has
seen there for ``lease_seconds`` and does not hold itself is moved back to the inbox. The
claim is at least as old as that observation, so a live claim younger than the lease is never
taken away, with no clock shared between hosts; UIDs are never reused within a UIDVALIDITY,
so a stale observation cannot apply to another message. Returning a claim takes a lock folder
too (``return-<uidvalidity>-<uid>``: two sweepers never both move it back), and lock folders
left by a crash between CREATE and DELETE are deleted the same way, after a lease.
A holder never works on a message longer than half the lease. After a restart the recovery
takes at most one lease from the restart. (Not chosen: a ``$PasserelleClaim<epoch>`` keyword
per claim -- it creates a new keyword name on the mailbox at every claim, Maildir stores only
26 keyword names in its file names, and it relies on the instances' clocks agreeing.)

Every IMAP command is bounded (``command_timeout``, ``fetch_timeout``; ``idle_start`` too)
and a dropped connection is noticed at once (the protocol's connection-lost callback); any
failure of the session closes both connections and reconnects with exponential backoff. A
claim held when the connection dropped is finished after reconnecting (if it was delivered
already, only its removal is redone: no second delivery). Duplicates are possible only when
a holder outlives its lease or loses its connection between delivery and removal and then
never comes back; loss is not possible.

Logs: one trace per claim (``imap.claimed``, ``imap.delivered``, ``imap.requeued``,
``imap.rejected``, ``imap.dsn_sent``, ``imap.lease_expired``...), the mailbox pseudonymised,
never content, addresses or subjects. aioimaplib logs whole responses at DEBUG: its logger is
kept at WARNING.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from gateway.errors import (
    CONTENT_REFUSED,
    CRYPTO_UNSUPPORTED,
    DOWNSTREAM_DEFERRED,
    LOCAL_ERROR,
    MALFORMED,
    MESSAGE_TOO_BIG,
    NOT_ENCRYPTED,
    RECIPIENT_NOT_ALLOWED,
    SENDER_NOT_ALLOWED,
    SIGNATURE_REFUSED,
    GatewayError,
    Reply,
    TransientError,
)
from gateway.obs import new_trace_id, pseudonymise
from gateway.smime.mime import parse_entity
from gateway.smime.trust import email_addresses
from gateway.smime.unwrap import mailboxes, seal
from gateway.translate.pipeline import NetworkRuntime, recipient_certificate
from gateway.transport.dsn import build_dsn
from gateway.transport.imap_responses import (
    FolderUnusable,
    ImapError,
    fetch_of,
    fetched_literal,
    fetched_size,
    listed_name,
    search_uids,
    server_text,
)
from gateway.transport.imap_responses import (
    validity as validity_of,
)
from gateway.transport.imap_session import Connection, FolderNames, ImapSettings, quote
from gateway.transport.inbound import InboundMessage
from gateway.transport.smtp_out import NextHop, deliver

log = structlog.get_logger("gateway.imap_in")
# At DEBUG aioimaplib logs every server response, message content included.
logging.getLogger("aioimaplib.aioimaplib").setLevel(logging.WARNING)
logging.getLogger("aioimaplib").setLevel(logging.WARNING)

Process = Callable[[InboundMessage], Awaitable[Reply]]
CheckSender = Callable[[str], object]  # raises GatewayError
RouteRecipient = Callable[[str], str]  # raises GatewayError

MAX_ADDRESS_HEADER = 16 * 1024
# Refusals given before (or instead of) a verified signature: no DSN to the claimed sender.
UNVERIFIED_REFUSALS = frozenset({CONTENT_REFUSED, SIGNATURE_REFUSED, NOT_ENCRYPTED,
                                 CRYPTO_UNSUPPORTED, MALFORMED})
_RNG = random.SystemRandom()  # jitter and shuffling only



# --- the DSN sender ---------------------------------------------------------------------------


@dataclass
class Bouncer:
    """Seals a DSN with the source network's gateway identity for the original sender (found in
    the source network's directory) and delivers it through the source network's relay."""

    hostname: str
    runtime: Callable[[], NetworkRuntime]  # the source network's runtime of the moment
    hop: Callable[[], NextHop]  # the source network's next hop
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    def seal_dsn(self, original: bytes, *, sender: str, recipients: Sequence[str],
                 reply: Reply, trace_id: str) -> bytes:
        at = self.clock()
        runtime = self.runtime()
        certificate = recipient_certificate(runtime, sender, at)
        ours = sorted(email_addresses(runtime.identity.certificate))
        dsn = build_dsn(original, sender=sender, recipients=recipients, reply=reply,
                        reporting_mta=self.hostname,
                        from_address=ours[0] if ours else f"postmaster@{self.hostname}",
                        at=at, message_id=f"dsn.{trace_id}.{secrets.token_hex(6)}@{self.hostname}",
                        boundary=f"=_dsn_{secrets.token_hex(12)}", trace_id=trace_id)
        return seal(dsn.entity, runtime.identity, [certificate], dsn.headers,
                    chain=runtime.identity_chain)

    async def send(self, original: bytes, *, sender: str, recipients: Sequence[str],
                   reply: Reply, trace_id: str) -> Reply:
        """The relay's verdict on the DSN (a GatewayError's reply if it could not be made)."""
        try:
            raw = await asyncio.to_thread(functools.partial(
                self.seal_dsn, original, sender=sender, recipients=recipients, reply=reply,
                trace_id=trace_id))
        except GatewayError as exc:
            return exc.reply
        return await deliver(self.hop(), "", [sender], raw)  # null reverse-path (RFC 3464)


# --- the poller -------------------------------------------------------------------------------


@dataclass
class _Claim:
    trace: str
    outcome: str | None = None  # "delivered" / "rejected" once decided: only removal is left


@dataclass(frozen=True)
class Envelope:
    sender: str | None  # None: no single, acceptable From (rejected without DSN)
    recipients: tuple[str, ...]  # To/Cc as written
    routed: tuple[str, ...]  # destination addresses, no duplicates
    refusal: Reply | None = None  # set when the message cannot be relayed at all
    # recipients a directory could not answer for yet (an LDAP alias): asked, then read again
    pending: tuple[str, ...] = ()


def envelope_of(raw: bytes, check_sender: CheckSender,
                route_recipient: RouteRecipient) -> Envelope:
    """Sender and recipients of a mailbox message, from its outer header fields."""
    try:
        entity = parse_entity(raw)
        froms = entity.get_all("From")
        found = mailboxes(froms[0]) if len(froms) == 1 and len(froms[0]) <= MAX_ADDRESS_HEADER \
            else []
        rcpts: list[str] = []
        for name in ("To", "Cc"):
            for value in entity.get_all(name):
                if len(value) <= MAX_ADDRESS_HEADER:
                    rcpts.extend(mailboxes(value))
    except GatewayError as exc:
        return Envelope(None, (), (), exc.reply)
    if len(found) != 1:
        return Envelope(None, tuple(rcpts), (), SENDER_NOT_ALLOWED)
    try:
        checked = check_sender(found[0])
    except GatewayError as exc:
        return Envelope(None, tuple(rcpts), (), exc.reply)
    sender = checked if isinstance(checked, str) and checked else found[0].lower()
    routed: list[str] = []
    pending: list[str] = []
    transient: Reply | None = None
    for rcpt in rcpts:
        try:
            target = route_recipient(rcpt)
        except TransientError as exc:  # a directory to ask: never "not for the gateway"
            pending.append(rcpt)
            transient = exc.reply
            continue
        except GatewayError:
            continue  # e.g. a colleague on the same network in Cc: not for the gateway
        if target not in routed:
            routed.append(target)
    # a recipient not judged yet holds the whole message (retried, never half relayed)
    refusal = transient if transient else None if routed else RECIPIENT_NOT_ALLOWED
    return Envelope(sender, tuple(rcpts), tuple(routed), refusal, tuple(pending))


@dataclass(frozen=True)
class _Folders:
    """The poller's folders as this server names them (``FolderNames``), for one session."""

    names: FolderNames
    mailbox: str
    processing: str
    rejected: str
    lock: str

    @classmethod
    def of(cls, settings: ImapSettings, names: FolderNames) -> _Folders:
        return cls(names, names.of(settings.mailbox), names.of(settings.processing_folder),
                   names.of(settings.rejected_folder), names.of(settings.lock_folder))


async def _ensure_folder(connection: Connection, folder: str) -> None:
    """``CREATE`` the folder unless it exists; one clear error naming it and the server's words
    if it can be neither created nor found (a reconnect would fail the same way)."""
    created = await connection.call(connection.imap.create(quote(folder)))
    if created.result == "OK":
        return
    listed = await connection.call(connection.imap.list('""', quote(folder)))
    if listed.result == "OK" and any(listed_name(line) == folder for line in listed.lines):
        return  # it was there already
    raise FolderUnusable(folder, server_text(created.lines))


class ImapPoller:
    """Relays the messages of one mailbox; ``run()`` until ``stop()``."""

    def __init__(self, settings: ImapSettings, *, check_sender: CheckSender,
                 route_recipient: RouteRecipient, process: Process,
                 bounce: Bouncer | None, pseudonym: Callable[[str], str] = pseudonymise,
                 clock: Callable[[], float] = time.monotonic,
                 prepare_recipient: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.s = settings
        self.check_sender = check_sender
        self.route_recipient = route_recipient
        self.prepare_recipient = prepare_recipient  # asks a directory (LDAP aliases) first
        self.process = process
        self.bounce = bounce
        self.clock = clock
        self.counts: collections.Counter[str] = collections.Counter()
        self.log = log.bind(network=settings.network,
                            mailbox=pseudonym(f"{settings.user}@{settings.host}/"
                                              f"{settings.mailbox}"))
        self._held: dict[int, _Claim] = {}  # processing UID -> our claim
        self._seen: dict[int, float] = {}  # processing UID -> when we first saw it there
        self._seen_locks: dict[str, float] = {}  # lock folder -> when we first saw it
        self._inbox_validity: bytes | None = None
        self._folders = _Folders.of(settings, FolderNames("/", ""))  # the server's: per session
        self._validity: bytes | None = None  # UIDVALIDITY of the processing folder
        self._stopping = asyncio.Event()
        self._retry_at = 0.0  # no claim before (after a 4xx)
        self._retry_delay = 0.0

    def stop(self) -> None:
        """Finish the message in hand, then leave (``run`` returns)."""
        self._stopping.set()

    # --- session management ---

    async def run(self) -> None:
        delay = self.s.backoff_initial
        while not self._stopping.is_set():
            inbox, work = Connection(self.s), Connection(self.s)
            connected = False
            try:
                await inbox.open()
                await work.open()
                connected = True
                delay = self.s.backoff_initial
                await self._session(inbox, work)
            except FolderUnusable as exc:
                # Reconnecting will not create it: say which folder and why, then back off.
                self.counts["folder_unusable"] += 1
                self.log.error("imap.folder_unusable", folder=exc.folder, server=exc.text,
                               retry_in=round(delay, 1))
            except ImapError as exc:
                self.counts["disconnected"] += 1
                self.log.warning("imap.disconnected", error=str(exc), connected=connected,
                                 held=len(self._held), retry_in=round(delay, 2))
            finally:
                inbox.close()
                work.close()
            if self._stopping.is_set():
                break
            await self._sleep(delay * _RNG.uniform(0.8, 1.2))
            delay = min(self.s.backoff_max, delay * 2)
        self.log.info("imap.stopped", held=len(self._held), **dict(self.counts))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=max(0.0, seconds))

    async def _session(self, inbox: Connection, work: Connection) -> None:
        f = self._folders = _Folders.of(self.s, inbox.names)
        for folder in (f.processing, f.rejected):
            await _ensure_folder(inbox, folder)
        selected = await inbox.ok(inbox.imap.select(quote(f.mailbox)), "SELECT inbox")
        self._inbox_validity = validity_of(selected.lines)
        selected = await work.ok(work.imap.select(quote(f.processing)),
                                 "SELECT processing")
        validity = validity_of(selected.lines)
        if validity != self._validity:  # a recreated folder: remembered UIDs mean nothing
            self._held.clear()
            self._seen.clear()
            self._validity = validity
        self.log.info("imap.connected", idle=self._idle_ok(inbox), held=len(self._held))
        for uid in list(self._held):  # claims of a session that dropped: finish them first
            await self._handle(work, uid)
        next_sweep = 0.0
        while not self._stopping.is_set():
            now = self.clock()
            if now >= next_sweep:
                await self._sweep(inbox, work)
                next_sweep = now + self.s.sweep_seconds
            if now >= self._retry_at:
                response = await inbox.ok(inbox.imap.uid_search(
                    "UNDELETED", charset=None),
                                          "SEARCH")
                candidates = sorted(search_uids(response.lines))
                if candidates:
                    await self._claim_some(inbox, work, candidates)
                    continue
            wake = next_sweep if now >= self._retry_at else min(next_sweep, self._retry_at)
            await self._wait(inbox, max(0.01, min(self.s.poll_seconds, wake - self.clock())))

    def _idle_ok(self, connection: Connection) -> bool:
        return self.s.use_idle and connection.imap.has_capability("IDLE")

    async def _wait(self, inbox: Connection, seconds: float) -> None:
        """IDLE on the inbox (or sleep then NOOP) for at most ``seconds``, or until stopped."""
        if not self._idle_ok(inbox):
            await self._sleep(seconds)
            await inbox.ok(inbox.imap.noop(), "NOOP")
            return
        # idle_start can hang forever if the server sends BYE first: bounded like the rest.
        idle = await inbox.call(inbox.imap.idle_start(timeout=seconds + 5))
        push = asyncio.ensure_future(inbox.imap.wait_server_push(timeout=seconds))
        stop = asyncio.ensure_future(self._stopping.wait())
        if inbox.lost is None:
            raise ImapError("not connected")
        try:
            await asyncio.wait({push, stop, inbox.lost}, return_when=asyncio.FIRST_COMPLETED,
                               timeout=seconds + 1)
        finally:
            for task in (push, stop):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if inbox.lost.done():
            raise ImapError("connection lost")
        inbox.imap.idle_done()
        await inbox.call(idle)

    # --- claim, deliver, remove ---

    async def _claim_some(self, inbox: Connection, work: Connection,
                          candidates: list[int]) -> None:
        pool = candidates[:self.s.window * 4]  # oldest first, but not all in the same order
        window = _RNG.sample(pool, min(len(pool), self.s.window))
        claimed = 0
        for uid in window:
            if self._stopping.is_set() or self.clock() < self._retry_at:
                return
            # Two sessions' MOVEs of one message can both succeed (Dovecot/Maildir copies,
            # then expunges): a lock folder per message makes the MOVE one instance's only,
            # and NOOP makes this session see every MOVE that finished before the lock.
            lock = self._lock_name("claim", self._inbox_validity, uid)
            if not await inbox.lock(lock):
                self.counts["lost_race"] += 1
                continue
            # (A lock left by a failure here is removed by the sweeper after the lease.)
            await inbox.ok(inbox.imap.noop(), "NOOP")
            processing_uid = await inbox.move(uid, self._folders.processing)
            await inbox.unlock(lock)
            if processing_uid is None:
                self.counts["lost_race"] += 1
                continue
            claimed += 1
            claim = _Claim(new_trace_id())
            self._held[processing_uid] = claim
            self.counts["claimed"] += 1
            self.log.info("imap.claimed", trace=claim.trace, uid=processing_uid)
            await self._handle(work, processing_uid)
        if not claimed:  # every candidate was another instance's: let it move on first
            await self._sleep(_RNG.uniform(0.01, 0.1))

    async def _fetch(self, work: Connection, uid: int, item: str) -> list[object] | None:
        """One FETCH of ``uid``; a NOOP and a second try if the session had not seen it yet."""
        for attempt in range(2):
            response = await work.ok(work.imap.uid("fetch", str(uid), f"(UID {item})"),
                                     "FETCH", timeout=self.s.fetch_timeout)
            lines: list[object] = list(response.lines)
            if any(fetch_of(line) == uid for line in lines):
                return lines
            if attempt == 0:
                await work.ok(work.imap.noop(), "NOOP")
        return None

    async def _handle(self, work: Connection, uid: int) -> None:
        claim = self._held[uid]
        bound = self.log.bind(trace=claim.trace, uid=uid)
        if claim.outcome is not None:  # decided before a disconnection: only remove it
            await self._finish(work, uid, claim, bound)
            return
        started = time.perf_counter()
        sized = await self._fetch(work, uid, "RFC822.SIZE")
        size = fetched_size(sized, uid) if sized is not None else None
        if size is None:
            self._held.pop(uid, None)
            self.counts["vanished"] += 1
            bound.warning("imap.vanished")  # requeued by a sweeper: not ours any more
            return
        too_big = size > self.s.max_message_bytes
        lines = await self._fetch(work, uid, "BODY.PEEK[HEADER]" if too_big else "BODY.PEEK[]")
        raw = fetched_literal(lines, uid) if lines is not None else None
        if raw is None:
            self._held.pop(uid, None)
            self.counts["vanished"] += 1
            bound.warning("imap.vanished")
            return
        envelope = envelope_of(raw, self.check_sender, self.route_recipient)
        if envelope.pending and self.prepare_recipient is not None:
            with contextlib.suppress(GatewayError):  # unanswered: the refusal stays 4xx
                for rcpt in envelope.pending:
                    await self.prepare_recipient(rcpt)
                envelope = envelope_of(raw, self.check_sender, self.route_recipient)
        if too_big:
            reply = MESSAGE_TOO_BIG
        elif envelope.refusal is not None:
            reply = envelope.refusal
        else:
            reply = await self._process(raw, envelope, claim.trace, bound)
        bound.info("imap.processed", reply=reply.code, status=reply.status, size=size,
                   recipients=len(envelope.routed),
                   duration_ms=round((time.perf_counter() - started) * 1000, 1))
        if 200 <= reply.code < 300:
            claim.outcome = "delivered"
            self._retry_delay = 0.0
        elif reply.permanent:
            if not await self._bounce(raw, envelope, reply, claim, bound):
                await self._requeue(work, uid, reply, bound)
                return
            claim.outcome = "rejected"
        else:
            await self._requeue(work, uid, reply, bound)
            return
        await self._finish(work, uid, claim, bound)

    async def _process(self, raw: bytes, envelope: Envelope, trace: str,
                       bound: Any) -> Reply:
        message = InboundMessage(
            network=self.s.network, mail_from=envelope.sender or "", rcpt_tos=envelope.recipients,
            routed_rcpts=envelope.routed, content=raw, peer=self.s.host, tls_peer_cert=None,
            trace_id=trace)
        try:
            reply = await asyncio.wait_for(self.process(message), timeout=self.s.budget)
        except TimeoutError:
            bound.warning("imap.budget_exceeded", budget_s=self.s.budget)
            return DOWNSTREAM_DEFERRED
        except GatewayError as exc:
            return exc.reply
        except Exception as exc:  # fail closed: unexpected means "try again later"
            bound.error("imap.process_failed", error=type(exc).__name__)
            return LOCAL_ERROR
        return reply if isinstance(reply, Reply) else LOCAL_ERROR

    async def _bounce(self, raw: bytes, envelope: Envelope, reply: Reply, claim: _Claim,
                      bound: Any) -> bool:
        """Send the DSN; False if it was deferred (the original is then requeued)."""
        if envelope.sender is None or self.bounce is None:
            bound.warning("imap.dsn_skipped", reason="no acceptable sender" if
                          envelope.sender is None else "no bouncer", reply=reply.code)
            return True
        if reply in UNVERIFIED_REFUSALS:
            # The signature did not verify (or could not be reached): From is only a claim,
            # and a report to it would send mail to whoever the attacker named.
            bound.warning("imap.dsn_skipped", reason="sender not verified", reply=reply.code,
                          status=reply.status)
            return True
        verdict = await self.bounce.send(raw, sender=envelope.sender,
                                         recipients=envelope.recipients, reply=reply,
                                         trace_id=claim.trace)
        if 200 <= verdict.code < 300:
            self.counts["dsn_sent"] += 1
            bound.info("imap.dsn_sent", reply=reply.code, status=reply.status)
            return True
        if verdict.permanent:  # kept in the rejected folder: the operator sees it there
            self.counts["dsn_failed"] += 1
            bound.error("imap.dsn_failed", reply=reply.code, dsn_reply=verdict.code,
                        dsn_status=verdict.status)
            return True
        bound.warning("imap.dsn_deferred", dsn_reply=verdict.code, dsn_status=verdict.status)
        return False

    async def _finish(self, work: Connection, uid: int, claim: _Claim, bound: Any) -> None:
        if claim.outcome == "delivered":
            await work.ok(work.imap.uid("store", str(uid), "+FLAGS.SILENT", r"(\Deleted)"),
                          "STORE")
            await work.ok(work.imap.uid("expunge", str(uid)), "EXPUNGE")
            self.counts["delivered"] += 1
            bound.info("imap.delivered")
        else:
            moved = await work.move(uid, self._folders.rejected)
            self.counts["rejected"] += 1
            bound.warning("imap.rejected", moved=moved is not None)
        self._held.pop(uid, None)
        self._seen.pop(uid, None)

    async def _requeue(self, work: Connection, uid: int, reply: Reply, bound: Any) -> None:
        """Back to the inbox (end of the queue); this poller waits before claiming again."""
        moved = await work.move(uid, self._folders.mailbox)
        self._held.pop(uid, None)
        self._seen.pop(uid, None)
        self._retry_delay = min(self.s.backoff_max,
                                max(self.s.backoff_initial, self._retry_delay * 2))
        self._retry_at = self.clock() + self._retry_delay
        self.counts["requeued"] += 1
        bound.warning("imap.requeued", reply=reply.code, status=reply.status,
                      moved=moved is not None, retry_in=round(self._retry_delay, 2))

    def _lock_name(self, kind: str, validity: bytes | None, uid: int) -> str:
        f = self._folders
        return f.names.child(f.lock, f"{kind}-{(validity or b'0').decode()}-{uid}")

    async def _sweep(self, inbox: Connection, work: Connection) -> None:
        """The lease: return what has sat claimed too long (see the module docstring)."""
        now = self.clock()
        prefix = self._folders.names.child(self._folders.lock, "")
        listed = await inbox.ok(inbox.imap.list('""', quote(prefix + "%")), "LIST")
        locks = {name for name in (listed_name(line) for line in listed.lines)
                 if name is not None and name.startswith(prefix)}
        for name in _expired(self._seen_locks, locks, now, self.s.lease_seconds):
            await inbox.unlock(name)  # its owner died between CREATE and DELETE
            self._seen_locks.pop(name, None)
            self.log.warning("imap.lock_expired", lease_s=self.s.lease_seconds)
        response = await work.ok(work.imap.uid_search("ALL", charset=None), "SEARCH")
        present = set(search_uids(response.lines)) - set(self._held)
        for uid in _expired(self._seen, present, now, self.s.lease_seconds):
            # several sweepers may find the same stale claim: the lock makes one return it
            lock = self._lock_name("return", self._validity, uid)
            if not await work.lock(lock):
                continue
            await work.ok(work.imap.noop(), "NOOP")
            moved = await work.move(uid, self._folders.mailbox)
            await work.unlock(lock)
            self._seen.pop(uid, None)
            if moved is not None:
                self.counts["lease_expired"] += 1
                self.log.warning("imap.lease_expired", uid=uid, lease_s=self.s.lease_seconds)


_K = TypeVar("_K", int, str)


def _expired(seen: dict[_K, float], present: set[_K], now: float, lease: float) -> list[_K]:
    """Update the first-seen times of ``present`` items; those seen for ``lease`` or more."""
    for item in [k for k in seen if k not in present]:
        del seen[item]
    for item in present:
        seen.setdefault(item, now)
    return sorted(k for k in present if now - seen[k] >= lease)
