"""One IMAP connection of the poller: its settings, every command bounded, and folder names.

Rule kept here: a command either completes within its bound or ends the session with
``ImapError`` (a lost connection aborts it at once), and every folder the gateway names is
written in the server's own hierarchy: the configured names use ``/``, the server's delimiter
(``LIST "" ""``) and personal namespace prefix (``NAMESPACE``) are asked once per connection.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import aioimaplib

from gateway.config import GatewaySettings, ImapConfig, default_of
from gateway.transport import tls
from gateway.transport.imap_responses import (
    FolderUnusable,
    ImapError,
    copyuid,
    list_delimiter,
    personal_namespace,
    server_text,
)

_G = functools.partial(default_of, GatewaySettings)  # its field defaults
_I = functools.partial(default_of, ImapConfig)  # its field defaults


@dataclass(frozen=True)
class ImapSettings:
    """One polled mailbox: where, who, which folders, and the time bounds."""

    network: str  # the network the mailbox belongs to (the source of its messages)
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    ssl_context: ssl.SSLContext = field(repr=False, default_factory=ssl.create_default_context)
    # Defaults are ImapConfig's and GatewaySettings' (written once, in gateway.config.settings).
    mailbox: str = _I("mailbox")
    processing_folder: str = _I("processing_folder")
    rejected_folder: str = _I("rejected_folder")
    lock_folder: str = "Passerelle/Locks"  # short-lived lock folders (claims, returns)
    lease_seconds: float = _I("lease_seconds")
    poll_seconds: float = _I("poll_seconds")  # IDLE refreshed (or mailbox polled) this often
    use_idle: bool = True
    command_timeout: float = 30.0
    fetch_timeout: float = 120.0
    process_budget: float = _G("data_timeout_seconds")  # translate + deliver; capped at lease/2
    max_message_bytes: int = _G("max_message_bytes")
    backoff_initial: float = 1.0  # reconnection, and claiming again after a 4xx
    backoff_max: float = 300.0
    window: int = 16  # candidates shuffled together (oldest first): fewer races

    @property
    def budget(self) -> float:
        return max(0.1, min(self.process_budget, self.lease_seconds / 2))

    @property
    def sweep_seconds(self) -> float:
        return max(0.05, min(self.poll_seconds, self.lease_seconds / 4))

    @classmethod
    def from_config(cls, network: str, imap: ImapConfig, *, max_message_bytes: int,
                    process_budget: float) -> ImapSettings:
        """From ``[networks.<name>.imap]``; reads the password file (first line)."""
        password = imap.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
        return cls(network=network, host=imap.host, port=imap.port, user=imap.user,
                   password=password, ssl_context=client_context(imap),
                   mailbox=imap.mailbox, processing_folder=imap.processing_folder,
                   rejected_folder=imap.rejected_folder, lease_seconds=imap.lease_seconds,
                   poll_seconds=imap.poll_seconds, max_message_bytes=max_message_bytes,
                   process_budget=process_budget)


def client_context(imap: ImapConfig) -> ssl.SSLContext:
    """IMAPS: verified against ``tls_ca`` if given (else the system CAs); optional client cert."""
    if imap.tls_ca is not None:
        return tls.client_context(ca_files=[imap.tls_ca], client_cert=imap.client_cert,
                                  client_key=imap.client_key)
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if imap.client_cert is not None and imap.client_key is not None:
        context.load_cert_chain(str(imap.client_cert), str(imap.client_key))
    return context


class Connection:
    """An aioimaplib client whose every command is bounded and aborted by a lost connection."""

    def __init__(self, settings: ImapSettings) -> None:
        self.s = settings
        self.client: aioimaplib.IMAP4_SSL | None = None
        self.lost: asyncio.Future[None] | None = None
        self.names = FolderNames("/", "")  # the server's, once ``open`` asked

    def _on_lost(self, _exc: Exception | None) -> None:
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    @property
    def imap(self) -> aioimaplib.IMAP4_SSL:
        if self.client is None:
            raise ImapError("not connected")
        return self.client

    async def open(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()
        self.client = aioimaplib.IMAP4_SSL(self.s.host, self.s.port,
                                           ssl_context=self.s.ssl_context,
                                           timeout=self.s.command_timeout)
        self.client.protocol.conn_lost_cb = self._on_lost
        await self.call(self.imap.wait_hello_from_server())
        response = await self.call(self.imap.login(self.s.user, self.s.password))
        if response.result != "OK":
            raise ImapError("login refused")
        needed = {"MOVE", "UIDPLUS"}
        if not needed <= self.imap.protocol.capabilities:
            await self.call(self.imap.protocol.capability())
        missing = needed - self.imap.protocol.capabilities
        if missing:
            raise ImapError(f"server lacks {', '.join(sorted(missing))}")
        self.names = await self._folder_names()

    async def _folder_names(self) -> FolderNames:
        """The server's hierarchy delimiter and personal namespace prefix (Dovecot's default
        Maildir++ layout uses ".", Courier and Cyrus put folders under "INBOX.")."""
        listed = await self.ok(self.imap.list('""', '""'), "LIST delimiter")
        delimiter = list_delimiter(listed.lines)
        prefix = ""
        if "NAMESPACE" in self.imap.protocol.capabilities:
            response = await self.call(self.imap.namespace())
            if response.result == "OK":
                prefix = personal_namespace(response.lines)
        return FolderNames(delimiter, prefix)

    async def call(self, awaitable: Awaitable[Any], timeout: float | None = None) -> Any:
        """Run one command: its result, or ImapError on timeout or connection loss."""
        if self.lost is None:
            raise ImapError("not connected")
        task = asyncio.ensure_future(awaitable)
        try:
            done, _ = await asyncio.wait({task, self.lost}, return_when=asyncio.FIRST_COMPLETED,
                                         timeout=timeout or self.s.command_timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            try:
                return task.result()
            except (aioimaplib.AioImapException, OSError, TimeoutError) as exc:
                raise ImapError(type(exc).__name__) from None
        task.cancel()
        raise ImapError("connection lost" if self.lost.done() else "command timed out")

    async def ok(self, awaitable: Awaitable[Any], what: str,
                 timeout: float | None = None) -> Any:
        response = await self.call(awaitable, timeout)
        if response.result != "OK":
            raise ImapError(f"{what} refused: {server_text(response.lines)}")
        return response

    async def move(self, uid: int, folder: str) -> int | None:
        """``UID MOVE``: the new UID, or None if the message is not there any more."""
        response = await self.call(self.imap.uid("move", str(uid), quote(folder)))
        if response.result != "OK":
            return None  # e.g. NO [EXPUNGEISSUED]: someone else moved it
        return copyuid(response.lines, uid)

    async def lock(self, name: str) -> bool:
        """``CREATE`` a lock folder: True for the one session that created it (the server
        makes a folder once: mkdir is atomic), False if it exists already."""
        response = await self.call(self.imap.create(quote(name)))
        return bool(response.result == "OK")

    async def unlock(self, name: str) -> None:
        await self.call(self.imap.delete(quote(name)))  # gone already: fine

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None and client.protocol.transport is not None:
            client.protocol.transport.abort()


@dataclass(frozen=True)
class FolderNames:
    """How the server writes a folder: the configured ``A/B`` becomes ``prefix + A<d>B``."""

    delimiter: str | None  # None: a flat server, no hierarchy
    prefix: str  # personal namespace prefix, e.g. "INBOX." ("" for most servers)

    def of(self, configured: str) -> str:
        """The server's name of a configured folder (``/``-separated); INBOX stays INBOX."""
        if configured.upper() == "INBOX":
            return configured
        parts = [part for part in configured.split("/") if part]
        if self.delimiter is None:
            if len(parts) > 1:
                raise FolderUnusable(configured, "the server has no folder hierarchy")
            name = parts[0] if parts else configured
        else:
            if any(self.delimiter in part for part in parts):
                raise FolderUnusable(configured, f"a name in it holds the server's hierarchy "
                                                 f"delimiter {self.delimiter!r}")
            name = self.delimiter.join(parts)
        if self.prefix and not name.startswith(self.prefix):
            name = self.prefix + name
        return name

    def child(self, parent: str, name: str) -> str:
        """``name`` inside the server folder ``parent``."""
        return parent + (self.delimiter or "") + name if self.delimiter else parent + "-" + name


def quote(folder: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./-]+", folder):
        return folder
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
