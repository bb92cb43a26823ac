"""Fuzz targets: one parser of network input each, its seed inputs, and the rule it must keep.

Rule kept here (h11's): any input is either handled or refused with the parser's own typed
error -- ``gateway.errors`` types, or the error its module documents (``ImapError`` for IMAP
server data) -- never anything else (no ``ValueError``, ``IndexError``, ``UnicodeError``,
``RecursionError``, lxml, asn1crypto or zipfile errors). A target returns normally when the rule
held and raises :class:`Finding` (with the leaked exception as its cause) when it did not.

Seeds are generated at run time, the CMS ones with a throw-away PKI made in memory
(``gateway.smime.certgen``; OpenSSL's CLI adds the shapes other clients write when it is
installed, its key files living in a temporary folder for the duration of one call). Nothing
key-related is ever written anywhere else. Both the hypothesis tests (``tests/fuzz``) and the
atheris harness (``bench/fuzz/harness.py``) use these targets and seeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import io
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway import errors
from gateway.errors import GatewayError, SenderError
from gateway.formats import charset, hprim, mime_limits, xdm, xmlsafe
from gateway.formats.cda_reader import read_cda
from gateway.formats.convert import hprim_from_xdm, hprim_to_xdm
from gateway.smime import certgen, directory, envelope, mime, signature, unwrap
from gateway.smime.model import Identity
from gateway.smime.trust import TrustStore
from gateway.translate import routing
from gateway.transport import imap_in, imap_responses, smtp_in

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)


# --- the rule ---------------------------------------------------------------------------------


class Finding(AssertionError):
    """A parser broke the rule: the cause is the exception that leaked (or the broken reply)."""


def handled(call: Callable[..., Any], *args: Any,
            allowed: tuple[type[BaseException], ...] = (GatewayError,), **kwargs: Any) -> Any:
    """``call(*args)``: its result, or None when it raised one of ``allowed`` (or a known,
    reported bug); :class:`Finding` for any other exception."""
    try:
        return call(*args, **kwargs)
    except allowed:
        return None
    except Finding:
        raise
    except Exception as error:
        name = getattr(call, "__qualname__", repr(call))
        raise Finding(f"{name} leaked {type(error).__name__}: {str(error)[:200]}") from error


# --- SMTP: a real listener fed byte streams -----------------------------------------------------

SENDER = "jean.dupont@medical59.apicrypt.org"
RCPT = "marie.curie=hopital-test.mssante.fr@passerelle.apicrypt.org"
TABLE = routing.build_table(
    {"apicrypt": ["*.apicrypt.org"], "mssante": ["*.mssante.fr"]},
    {"apicrypt": "passerelle.apicrypt.org", "mssante": "passerelle.mssante.fr"},
    [("paul.martin@cabinet.apicrypt.org", "paul.martin@chu-test.mssante.fr")],
)

# A reply line (RFC 5321 §4.2): three digits, then " " (last line) or "-" (more), printable text.
_REPLY_LINE = re.compile(rb"([2-5][0-5][0-9])([ -])([\x20-\x7e]*)")


def check_replies(received: bytes, *, reset: bool = False) -> list[int]:
    """The reply codes in ``received``; :class:`Finding` if any line is not a well-formed reply
    (a multi-line reply keeps one code) or if a library's internals show.

    ``reset``: the connection was reset, so a last line may be cut short.
    """
    lines = received.split(b"\r\n")
    tail = lines.pop()  # what follows the last CRLF: nothing, unless the reply was cut
    if tail and not reset:
        raise Finding(f"reply not ended by CRLF: {tail[:80]!r}")
    codes: list[int] = []
    pending: bytes | None = None
    for line in lines:
        match = _REPLY_LINE.fullmatch(line)
        if match is None:
            raise Finding(f"malformed reply line: {line[:120]!r}")
        if pending is not None and match.group(1) != pending:
            raise Finding(f"multi-line reply changed its code: {line[:120]!r}")
        if b"Error: (" in line or b"Traceback" in line:
            raise Finding(f"reply shows internals: {line[:120]!r}")
        if match.group(2) == b"-":
            pending = match.group(1)
        else:
            pending = None
            codes.append(int(match.group(1)))
    return codes


@dataclass
class _Recorded:
    """Unexpected exceptions seen by the listener's policy callables and handler."""

    errors: list[BaseException] = field(default_factory=list)

    def wrap(self, call: Callable[[str], Any]) -> Callable[[str], Any]:
        def wrapped(value: str) -> Any:
            try:
                return call(value)
            except GatewayError:
                raise
            except Exception as error:
                self.errors.append(error)
                raise

        return wrapped


class SmtpRig:
    """A gateway SMTP listener (aiosmtpd, the gateway's own session class and the real routing
    policy) on a loopback port of the running loop; plain SMTP, optional PROXY protocol."""

    def __init__(self, *, proxy_protocol: bool = False, require_starttls: bool = False) -> None:
        self.proxy_protocol = proxy_protocol
        self.require_starttls = require_starttls
        self.recorded = _Recorded()
        self.sessions: list[Any] = []
        self.messages = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def _process(self, message: smtp_in.InboundMessage) -> errors.Reply:
        self.messages += 1
        # a parser of the content, as the pipeline would run first: typed errors are replies
        mime_limits.check_limits(message.content)
        return errors.OK

    async def start(self) -> None:
        settings = smtp_in.ListenerSettings(
            network="apicrypt", host="127.0.0.1", port=0, hostname="gw.example",
            ssl_context=None, max_message_bytes=64 * 1024, max_recipients=5,
            command_timeout=30, data_budget=10, max_sessions=50, max_sessions_per_ip=50,
            rate_limit_per_minute=0, pseudonym_key=b"k" * 32,
            proxy_protocol=self.proxy_protocol, proxy_timeout=30.0,
            require_starttls=self.require_starttls)
        loop = asyncio.get_running_loop()
        factory = smtp_in.protocol_factory(
            settings,
            check_sender=self.recorded.wrap(
                functools.partial(routing.check_sender, TABLE, "apicrypt")),
            route_recipient=self.recorded.wrap(
                functools.partial(routing.route_recipient, TABLE, "apicrypt")),
            process=self._process, loop=loop)

        def make() -> Any:
            session = factory()
            handler = session.event_handler
            if "handle_exception" not in vars(handler):  # once: the handler is shared
                original = handler.handle_exception

                async def handle_exception(error: Exception) -> str:
                    self.recorded.errors.append(error)
                    return str(await original(error))

                handler.handle_exception = handle_exception
            self.sessions.append(session)
            return session

        self.server = await loop.create_server(make, host="127.0.0.1", port=0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def open_sessions(self) -> int:
        if not self.sessions:
            return 0
        state = self.sessions[0]._state
        counted: int = state.sessions + sum(state.per_ip.values())
        return counted

    async def session(self, stream: bytes, *, chunk: int = 0, timeout: float = 20.0) -> bytes:
        """Send ``stream`` (in pieces of ``chunk`` bytes, 0: at once), close our side, and
        return every byte the listener answered; :class:`Finding` when the rule broke."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        reset = False
        try:
            with contextlib.suppress(ConnectionError):
                pieces = [stream] if chunk <= 0 else [
                    stream[i:i + chunk] for i in range(0, len(stream), chunk)]
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            received = bytearray()
            try:
                async with asyncio.timeout(timeout):
                    while data := await reader.read(65536):
                        received += data
            except ConnectionError:
                reset = True
            except TimeoutError:
                raise Finding("the listener neither answered nor closed the session") from None
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self._settle()
        if self.recorded.errors:
            error = self.recorded.errors.pop()
            self.recorded.errors.clear()
            raise Finding(f"listener hit {type(error).__name__}: {str(error)[:200]}") from error
        check_replies(bytes(received), reset=reset)
        return bytes(received)

    async def _settle(self) -> None:
        """Wait for the listener to see the session closed; its counters must go back to 0."""
        for _ in range(400):
            if self.open_sessions() == 0 and all(
                    s.transport is None or s.transport.is_closing() for s in self.sessions):
                break
            await asyncio.sleep(0.005)
        else:
            raise Finding("a closed session is still counted by the listener")
        self.sessions = self.sessions[-1:]  # keep one for its shared state


SMTP_COMMANDS: tuple[bytes, ...] = (
    b"EHLO client.example", b"HELO client.example", b"MAIL FROM:<" + SENDER.encode() + b">",
    b"MAIL FROM:<" + SENDER.encode() + b"> SIZE=100 BODY=8BITMIME", b"MAIL FROM:<>",
    b"RCPT TO:<" + RCPT.encode() + b">", b"RCPT TO:<paul.martin@cabinet.apicrypt.org>",
    b"RCPT TO:<\"quoted\"@passerelle.apicrypt.org>", b"RCPT TO:<@a,@b:x@y.apicrypt.org>",
    b"DATA", b"RSET", b"NOOP", b"QUIT", b"VRFY postmaster", b"EXPN list", b"HELP",
    b"HELP MAIL", b"STARTTLS", b"AUTH PLAIN AGVtAGU=", b"BDAT 10 LAST", b"MAIL FROM:",
    b"RCPT TO:", b"MAIL", b"RCPT", b"EHLO", b"XCLIENT ADDR=1.2.3.4",
)
_MESSAGE = (b"From: " + SENDER.encode() + b"\r\nTo: x@y.mssante.fr\r\nSubject: s\r\n"
            b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nR\xe9sultat\r\n..dot\r\n")


def smtp_seeds() -> list[bytes]:
    """Whole client streams: good sessions, and the classic faults each listener meets."""
    ehlo, mail, rcpt = SMTP_COMMANDS[0], SMTP_COMMANDS[2], SMTP_COMMANDS[5]
    good = b"\r\n".join((ehlo, mail, rcpt, b"DATA")) + b"\r\n" + _MESSAGE + b".\r\nQUIT\r\n"
    return [
        good,
        b"\r\n".join((ehlo, mail, rcpt, b"RCPT TO:<a@b.mssante.fr>", b"DATA")) + b"\r\n"
        + _MESSAGE + b".\r\n" + b"\r\n".join((b"RSET", mail, rcpt, b"DATA")) + b"\r\n"
        + b"x\n.\nMAIL FROM:<evil@x.apicrypt.org>\r\n.\r\nQUIT\r\n",  # LF.LF smuggling
        b"HELO x\r\n" + mail + b"\r\n" + rcpt + b"\r\nDATA\r\n" + b"A" * 2000 + b"\r\n.\r\n",
        b"EHLO x\r\n" + b"MAIL FROM:<" + b"a" * 600 + b"@x.apicrypt.org>\r\n",
        b"\xff\xfe\x00EHLO \xe9\r\nNOOP\r\n" + b"X" * 1100 + b"\r\nQUIT\r\n",
        b"EHLO x\r\n" + mail + b"\r\n" + rcpt + b"\r\nDATA\r\n" + b"a\x00b\r\nc\rd\r\n.\r\n",
        b"".join(b"BOGUS%d\r\n" % i for i in range(12)),
        b"EHLO x\r\nSTARTTLS\r\n\x16\x03\x01\x00\x05hello",
        b"EHLO x\r\n" + mail + b"\r\n" + b"".join(b"RCPT TO:<a%d@b.c>\r\n" % i for i in range(7)),
    ]


def proxy_seeds() -> list[bytes]:
    """PROXY protocol v1 and v2 headers (RFC-like spec by HAProxy), each before a session."""
    session = b"EHLO x\r\nNOOP\r\nQUIT\r\n"
    v2_sig = b"\r\n\r\n\x00\r\nQUIT\n"
    v4 = bytes([203, 0, 113, 7, 127, 0, 0, 1]) + b"\x9c\x40\x00\x19"  # ports 40000, 25
    v6 = bytes(15) + b"\x01" + bytes(15) + b"\x01" + b"\x9c\x40\x00\x19"
    tlv = b"\x01\x00\x02h2" + b"\x04\x00\x01\x00"  # ALPN, NOOP
    unix = b"/tmp/a".ljust(108, b"\x00") + b"/tmp/b".ljust(108, b"\x00")

    def v2(cmd: int, fam: int, body: bytes) -> bytes:
        return v2_sig + bytes([cmd, fam]) + len(body).to_bytes(2, "big") + body

    return [
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n" + session,
        b"PROXY TCP6 2001:db8::1 ::1 40000 25\r\n" + session,
        b"PROXY UNKNOWN\r\n" + session,
        b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n" + session,
        b"PROXY TCP4 999.1.1.1 127.0.0.1 70000 25\r\n" + session,
        v2(0x21, 0x11, v4) + session,
        v2(0x21, 0x11, v4 + tlv) + session,
        v2(0x21, 0x21, v6) + session,
        v2(0x20, 0x00, b"") + session,
        v2(0x21, 0x31, unix) + session,
        v2(0x21, 0x12, v4) + session,
    ]


# --- envelope and header addresses ---------------------------------------------------------


ADDRESS_SEEDS: tuple[str, ...] = (
    SENDER, RCPT, f"<{SENDER}>", "<>", "", "paul.martin@cabinet.apicrypt.org",
    "PAUL.Martin@CABINET.apicrypt.org", "a=b.mssante.fr@passerelle.apicrypt.org",
    "x=y=z@passerelle.apicrypt.org", "user@xn--mnchen-3ya.apicrypt.org",
    "user@münchen.apicrypt.org",
    "user@ＡＰＩcrypt.org", "a@[127.0.0.1]", "\"a b\"@x.org", "@a,@b:c@d.org", "a%b@c.org",
    "a!b@c.org", "a..b@c.org", "a@b..c", "a@-b.org", "a@b.123", "x@" + "a" * 64 + ".org",
    "x@" + ".".join(["a" * 63] * 5), "Jean <jean@x.org>", "\"Dupont, J\" <j@x.org>, k@y.org",
    "group: a@b.org, c@d.org;", "(comment) a@b.org (more)", "=?utf-8?q?J=C3=A9?= <j@x.org>",
    "a@b.org (unterminated", "<a@b.org", "\\\"a@b.org", "a@xn--.org", "a@xn--a.org",
    "a@ß.org", "a@" + "é" * 70 + ".org",
)


def check_address(text: str) -> None:
    """Envelope (routing), header (unwrap) and directory address readers on one string."""
    for source in routing.NETWORKS:
        handled(routing.normalise_address, text, allowed=(errors.RecipientRefused,))
        handled(routing.normalise_address, text, sender=True, allowed=(errors.SenderRefused,))
        handled(routing.check_sender, TABLE, source, text, allowed=(errors.SenderRefused,))
        handled(routing.reverse_sender, TABLE, source, text, allowed=(errors.SenderRefused,))
        handled(routing.route_recipient, TABLE, source, text,
                allowed=(errors.RecipientRefused,))
    handled(unwrap.mailboxes, text, allowed=(errors.SignerMismatch,))
    handled(unwrap.single_address, text, allowed=(errors.SignerMismatch,))
    handled(directory.normalise_address, text, allowed=())  # documented: never raises


# --- MIME -----------------------------------------------------------------------------------

_BUILTIN_MIME: tuple[bytes, ...] = (
    b"From: a@b.org\r\nTo: c@d.org\r\nSubject: x\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"\r\nhello\r\n",
    b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npre\r\n--b1\r\nContent-Type: "
    b"text/plain\r\n\r\none\r\n--b1\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n"
    b"--b2\r\n\r\ntwo\r\n--b2--\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n"
    b"\r\nbody\r\n--b1--\r\nepilogue\r\n",
    b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: a\r\n\r\nx\r\n"
    b"--d\r\nContent-Type: text/plain\r\n\r\ny\r\n--d--\r\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n--r\r\n"
    b"\r\nfailed\r\n--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x"
    b"\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\n\r\n--r--\r\n",
    b"Content-Type: text/plain; charset*=utf-8''%C3%A9; name*0=\"a\"; name*1=\"b\"\r\n"
    b"Content-Disposition: attachment; filename*=iso-8859-1''r%E9sultat.txt\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nR=E9sultat=\r\n\r\n",
    b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAxggE=\r\n",
    b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256;"
    b"\r\n boundary=\"s\"\r\n\r\n--s\r\nContent-Type: text/plain\r\n\r\nsigned\r\n--s\r\n"
    b"Content-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"MIIB\r\n--s--\r\n",
    b"Content-Type: application/octet-stream; name=\"x.p7m\"\r\n\r\n0\x80\x06\x09*\x86H\x86\xf7"
    b"\r\n\x01\x07\x02",
    b"From nobody\nX: y\n  folded\n\tagain\n\nbody\n",
    b"\r\nno headers\r\n",
)


def mime_seeds() -> list[bytes]:
    seeds = list(_BUILTIN_MIME)
    folder = REPO / "tests" / "data" / "normalise"
    if folder.is_dir():
        seeds += [p.read_bytes() for p in sorted(folder.glob("*.eml"))]
    return seeds


TIGHT_LIMITS = mime_limits.MimeLimits(
    max_bytes=256 * 1024, max_headers=20, max_header_line=200, max_header_bytes=1000,
    max_parts=12, max_depth=4, max_part_bytes=64 * 1024, max_addresses=5, max_params=4)


def check_mime_limits(raw: bytes) -> None:
    """``check_limits`` then ``parse_message``, with the default and with tight limits."""
    for limits in (mime_limits.DEFAULT_LIMITS, TIGHT_LIMITS):
        handled(mime_limits.scan_mime, raw, limits)
        message = handled(mime_limits.parse_message, raw, limits)
        if message is not None:
            # What the pipeline reads next. email parses a header when it is first read, and
            # raises ValueError, LookupError or UnicodeError on some odd values, TypeError on
            # mixed RFC 2231 continuations: normalise maps exactly those (the last only when
            # email raised it) to MalformedError, anything else would be a 451.
            handled(lambda m: [(p.get_content_type(), p.get_params(), p.get_filename(),
                                p.get_content_disposition(), p.get_content_charset())
                               for p in m.walk()], message,
                    allowed=(GatewayError, ValueError, LookupError, UnicodeError, TypeError))


def check_mime_entity(raw: bytes) -> None:
    """The S/MIME entity reader: parse, classify, split a multipart/signed, extract CMS."""
    entity = handled(mime.parse_entity, raw)
    if entity is None:
        return
    handled(lambda e: (e.content_type, e.content_disposition, e.file_name, e.get("From")),
            entity)
    handled(mime.classify, entity)
    handled(mime.split_signed, entity)
    handled(mime.pkcs7_der, entity)
    for name, value in entity.headers[:8]:
        for media in (True, False):
            handled(mime.parse_params, value, media_type=media)
        handled(mime.prepend_headers, b"X: y\r\n\r\n", [(name, value)])


# --- CMS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CmsWorld:
    """A throw-away PKI and genuine CMS made with it (kept in memory only)."""

    store: TrustStore
    identities: tuple[Identity, ...]  # the gateway's: RSA and EC
    enveloped: tuple[bytes, ...]  # EnvelopedData / AuthEnvelopedData DER or BER
    signed: tuple[bytes, ...]  # SignedData, opaque (eContent inside)
    detached: tuple[tuple[bytes, bytes], ...]  # (signature DER, the content it signs)
    messages: tuple[bytes, ...]  # whole S/MIME messages for unwrap
    refused: tuple[bytes, ...] = ()  # CMS with refused algorithms (3DES, SHA-1...)


ALICE = "alice.martin@medical59.apicrypt.org"
CONTENT = (b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
           b"\r\nR\xe9sultat d'analyse\r\n--pas une limite\r\n")


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(issued: certgen.Issued) -> bytes:
    return issued.key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())


def _openssl_variants(alice: certgen.Issued, gateway_rsa: certgen.Issued,
                      gateway_ec: certgen.Issued) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(enveloped, opaque signed, refused) as OpenSSL's CLI writes them; empty without it."""
    exe = shutil.which("openssl")
    if exe is None:
        return [], [], []
    enveloped: list[bytes] = []
    signed: list[bytes] = []
    refused: list[bytes] = []
    with tempfile.TemporaryDirectory(prefix="fuzz-pki-") as folder:
        base = Path(folder)
        files = {}
        for name, issued in (("alice", alice), ("rsa", gateway_rsa), ("ec", gateway_ec)):
            (base / f"{name}.pem").write_bytes(_pem(issued.certificate))
            (base / f"{name}.key").write_bytes(_key_pem(issued))
            (base / f"{name}.key").chmod(0o600)
            files[name] = (str(base / f"{name}.pem"), str(base / f"{name}.key"))

        def run(*args: str) -> bytes | None:
            done = subprocess.run([exe, "cms", *args, "-binary", "-outform", "DER"],
                                  input=CONTENT, capture_output=True, timeout=30, check=False)
            return done.stdout if done.returncode == 0 and done.stdout else None

        rsa_pem, ec_pem = files["rsa"][0], files["ec"][0]
        for args, into in (
            (("-encrypt", "-aes-256-cbc", "-stream", rsa_pem), enveloped),  # BER, chunked
            (("-encrypt", "-aes-128-cbc", "-keyid", rsa_pem), enveloped),  # recipient by SKI
            (("-encrypt", "-aes-256-cbc", "-recip", rsa_pem, "-keyopt",
              "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"), enveloped),
            (("-encrypt", "-aes-256-gcm", rsa_pem), enveloped),  # AuthEnvelopedData
            (("-encrypt", "-aes-256-cbc", ec_pem), enveloped),  # ECDH key agreement
            (("-encrypt", "-des3", rsa_pem), refused),
            (("-sign", "-nodetach", "-stream", "-signer", files["alice"][0], "-inkey",
              files["alice"][1]), signed),
            (("-sign", "-nodetach", "-signer", files["alice"][0], "-inkey", files["alice"][1],
              "-keyopt", "rsa_padding_mode:pss"), signed),
            (("-sign", "-nodetach", "-md", "sha1", "-signer", files["alice"][0], "-inkey",
              files["alice"][1]), refused),
        ):
            out = run(*args)
            if out is not None:
                into.append(out)
    return enveloped, signed, refused


@functools.cache
def cms_world() -> CmsWorld:
    ca = certgen.make_ca("Fuzz CA", not_before=NOW - dt.timedelta(days=30))
    at = NOW - dt.timedelta(days=1)
    alice = certgen.make_leaf(ca, "Alice Martin", emails=[ALICE], not_before=at)
    gateway_rsa = certgen.make_leaf(ca, "Gateway", emails=["gw@passerelle.apicrypt.org"],
                                    not_before=at)
    gateway_ec = certgen.make_leaf(ca, "Gateway EC", emails=["gw@passerelle.apicrypt.org"],
                                   key_kind="p256", not_before=at)
    alice_id = Identity(alice.certificate, alice.key)
    identities = (Identity(gateway_rsa.certificate, gateway_rsa.key),
                  Identity(gateway_ec.certificate, gateway_ec.key))
    store = TrustStore((ca.certificate,))
    enveloped = [envelope.encrypt(CONTENT, [gateway_rsa.certificate]),
                 envelope.encrypt(CONTENT, [gateway_ec.certificate, gateway_rsa.certificate])]
    detached_sig = signature.sign(CONTENT, alice_id, detached=True)
    opaque = signature.sign(CONTENT, alice_id, detached=False)
    more_env, more_signed, refused = _openssl_variants(alice, gateway_rsa, gateway_ec)
    headers = [("From", ALICE), ("To", "x@y.mssante.fr"), ("Subject", "s")]
    sealed = unwrap.seal(CONTENT, alice_id, [gateway_rsa.certificate], headers)
    opaque_message = mime.prepend_headers(
        mime.enveloped_entity(envelope.encrypt(mime.signed_opaque_entity(opaque),
                                               [gateway_rsa.certificate])), headers)
    return CmsWorld(
        store=store, identities=identities, enveloped=(*enveloped, *more_env),
        signed=(opaque, *more_signed), detached=((detached_sig, CONTENT),),
        messages=(sealed, opaque_message, mime.prepend_headers(
            mime.signed_opaque_entity(opaque), headers)),
        refused=tuple(refused))


def check_decrypt(der: bytes) -> None:
    world = cms_world()
    handled(envelope.decrypt, der, world.identities, allowed=(SenderError,))


def check_verify(der: bytes, content: bytes | None = None) -> None:
    world = cms_world()
    handled(signature.verify, der, world.store, NOW, detached_content=content,
            allowed=(SenderError,))


def check_unwrap(raw: bytes) -> None:
    world = cms_world()
    handled(unwrap.unwrap, raw, world.identities, world.store, NOW, allowed=(SenderError,))


def cms_seeds() -> list[bytes]:
    world = cms_world()
    return [*world.enveloped, *world.signed, *(sig for sig, _ in world.detached), *world.refused]


def check_cms(der: bytes) -> None:
    """Either reading of a CMS blob: as an envelope and as a signature (opaque and detached)."""
    check_decrypt(der)
    check_verify(der)
    check_verify(der, CONTENT)


# --- formats -----------------------------------------------------------------------------------


HPRIM_SAMPLE = (
    "DUR-004512\r\nDURAND\r\nÉlise\r\n12 rue des Tilleuls\r\nBât B\r\n59000 LILLE\r\n14/03/1952\r\n"
    "2 52 03 59 350 012 39\r\n2026112800417\r\n27/11/2026\r\nLABO59    Laboratoire\r\n"
    "MED0012345Dr Jean DUPONT\r\nTexte libre.\r\n****LAB****\r\n"
    "RES|INR|INR|N|3,2||2,0|3,0|H|F|\r\nTEX|zone thérapeutique\r\nRES|TP|TP|N|21|%|70|100|L|F\r\n"
    "****FIN****\r\nFin.\r\n****FINFICHIER****\r\n"
)


def hprim_seeds() -> list[bytes]:
    seeds = [HPRIM_SAMPLE.encode("latin-1"), HPRIM_SAMPLE.encode("utf-8"),
             HPRIM_SAMPLE.replace("\r\n", "\n").encode("cp1252"),
             HPRIM_SAMPLE.encode("utf-16")]
    folder = REPO / "tests" / "data" / "formats"
    if folder.is_dir():
        seeds += [p.read_bytes() for p in sorted(folder.glob("*.hpr"))]
    return seeds


def check_hprim_text(text: str) -> None:
    """HPRIM detection, parsing, and its conversion to CDA/XDM and back (what a lab result
    goes through toward MSSanté), on text as ``decode_text`` gives it."""
    handled(hprim.looks_like_hprim, text, allowed=())
    handled(hprim.validate_nir, text, allowed=())
    doc = handled(hprim.parse_hprim, text, allowed=(errors.MalformedError,))
    if doc is None:
        return
    handled(hprim.write_hprim, doc, allowed=())
    converted = handled(hprim_to_xdm, doc, effective_time=NOW, submission_time=NOW)
    if converted is None:
        return
    content = handled(xdm.read_xdm, converted[1])
    if content is None:
        raise Finding("an XDM archive the gateway wrote does not read back")
    handled(hprim_from_xdm, content, sender=("S", "Sender"), recipient=("R", "Recipient"))


def check_hprim(data: bytes) -> None:
    decoded = handled(charset.decode_text, data, allowed=())
    if decoded is not None:
        check_hprim_text(decoded.text)


CHARSET_LABELS: tuple[str | None, ...] = (
    None, "utf-8", "iso-8859-1", "windows-1252", "us-ascii", "utf-16", "utf-32", "macintosh",
    "ibm850", "utf-7", "idna", "punycode", "unicode_escape", "raw_unicode_escape", "base64",
    "rot13", "cp037", "shift_jis", "iso-2022-jp", "gb18030", "koi8-r", "x-unknown", "\"utf-8\"",
    "", " ", "utf-8\x00", "hz", "big5hkscs", "euc_jis_2004", "utf_8_sig", "mbcs", "undefined",
)


def check_charset(data: bytes, label: str | None) -> None:
    """``decode_text`` never raises; ``encode_for_apicrypt`` never raises for any ``str``."""
    decoded = handled(charset.decode_text, data, label, allowed=())
    text = decoded.text if decoded is not None else data.decode("latin-1")
    # text, not a string of code points: what follows encodes it (UTF-8 for MSSante)
    handled(text.encode, "utf-8", allowed=())
    handled(charset.encode_for_apicrypt, text, allowed=())
    if label is not None:
        handled(charset.encode_for_apicrypt, text, label, allowed=())
    handled(charset.encode_for_apicrypt, data.decode("utf-8", "surrogateescape"), allowed=())


@functools.cache
def xdm_seeds() -> list[bytes]:
    """Archives the gateway writes (from the HPRIM seeds), and odd zips."""
    seeds: list[bytes] = []
    doc = hprim.parse_hprim(HPRIM_SAMPLE)
    seeds.append(hprim_to_xdm(doc, effective_time=NOW, submission_time=NOW)[1])
    plain = hprim.parse_hprim(HPRIM_SAMPLE.split("****LAB****", 1)[0] + "****FINFICHIER****\r\n")
    seeds.append(hprim_to_xdm(plain, effective_time=NOW, submission_time=NOW)[1])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("IHE_XDM/SUBSET01/METADATA.XML", b"<a/>")
        archive.writestr("../evil", b"x")
    seeds.append(buffer.getvalue())
    return seeds


def xml_seeds() -> list[bytes]:
    seeds: list[bytes] = []
    for archive in xdm_seeds()[:2]:
        with zipfile.ZipFile(io.BytesIO(archive)) as opened:
            seeds += [opened.read(name) for name in opened.namelist() if name.endswith(".XML")]
    seeds += [
        b"<?xml version='1.0' encoding='ISO-8859-1'?><a>\xe9</a>",
        b"<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>",
        b"<?xml version='1.0' encoding='UTF-16'?><a/>".decode().encode("utf-16"),
        b"<a xmlns='urn:hl7-org:v3'><b/></a>",
    ]
    return seeds


def check_xdm(data: bytes) -> None:
    handled(xdm.read_xdm, data)
    small = xdm.XdmLimits(max_entries=4, max_entry_bytes=4096, max_total_bytes=8192,
                          max_ratio=5, max_xml_bytes=4096, max_name_bytes=40)
    handled(xdm.read_xdm, data, small)


def check_xml(data: bytes) -> None:
    handled(xmlsafe.parse_xml, data)
    handled(read_cda, data)


# --- IMAP server responses -----------------------------------------------------------------


IMAP_SEEDS: tuple[bytes, ...] = (
    b"OK [COPYUID 1700000000 7 42] Moved",
    b"OK [COPYUID 1700000000 3:5,9 100:102,103] Moved",
    b"* 1 FETCH (UID 42 RFC822.SIZE 1234)",
    b"* 1 FETCH (UID 42 BODY[] {5}",
    b"* 2 FETCH (FLAGS (\\Seen) UID 43)",
    b"* SEARCH 1 2 3 42",
    b"1 2 3",
    b"* OK [UIDVALIDITY 1700000000] UIDs valid",
    b"(\\HasNoChildren) \"/\" \"passerelle-locks/claim-1-42\"",
    b"(\\Noselect) \".\" passerelle-locks/return-1700000000-7",
)


def check_imap(lines: Sequence[bytes]) -> None:
    """The poller's readers of server responses, on one response's lines."""
    objects: list[object] = list(lines)
    for uid in (42, 7, 0):
        handled(imap_responses.copyuid, objects, uid, allowed=(imap_responses.ImapError,))
        handled(imap_responses.fetched_size, objects, uid, allowed=(imap_responses.ImapError,))
        handled(imap_responses.fetched_literal, objects, uid, allowed=(imap_responses.ImapError,))
    handled(imap_responses.search_uids, objects, allowed=(imap_responses.ImapError,))
    handled(imap_responses.validity, objects, allowed=(imap_responses.ImapError,))
    for line in lines:
        handled(imap_responses.listed_name, line, allowed=(imap_responses.ImapError,))
        handled(imap_responses.fetch_of, line, allowed=(imap_responses.ImapError,))


def check_imap_message(raw: bytes) -> None:
    """The poller's envelope reader (From, To, Cc of a mailbox message) with the real policy."""
    handled(imap_in.envelope_of, raw,
            functools.partial(routing.check_sender, TABLE, "apicrypt"),
            functools.partial(routing.route_recipient, TABLE, "apicrypt"))


def split_lines(data: bytes) -> list[bytes]:
    """A fuzz input as response lines (CRLF-separated), as aioimaplib hands them over."""
    return data.split(b"\r\n")


# --- the registry used by the atheris harness ---------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    seeds: Callable[[], Iterable[bytes]]
    run: Callable[[bytes], None]
    doc: str = ""


def _address_bytes(data: bytes) -> None:
    check_address(data.decode("utf-8", "replace"))


def _charset_bytes(data: bytes) -> None:
    label = CHARSET_LABELS[data[0] % len(CHARSET_LABELS)] if data else None
    check_charset(data[1:], label)


def _cms_bytes(data: bytes) -> None:
    check_cms(data)


def _smime_seeds() -> list[bytes]:
    return list(cms_world().messages)


def _imap_bytes(data: bytes) -> None:
    check_imap(split_lines(data))
    check_imap_message(data)


def _formats_bytes(data: bytes) -> None:
    """One input, the format chosen by its first byte (HPRIM, XDM, XML/CDA)."""
    kind, rest = (data[0] % 3, data[1:]) if data else (0, b"")
    (check_hprim, check_xdm, check_xml)[kind](rest)


def _formats_seeds() -> list[bytes]:
    return ([b"\x00" + s for s in hprim_seeds()] + [b"\x01" + s for s in xdm_seeds()]
            + [b"\x02" + s for s in xml_seeds()])


def _charset_seeds() -> list[bytes]:
    return [bytes([i]) + s for i, s in enumerate([*hprim_seeds(), b"caf\xc3\xa9 cr\xe8me"])]


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("address", lambda: [a.encode() for a in ADDRESS_SEEDS], _address_bytes,
           "routing.normalise_address/check_sender/route_recipient, unwrap.mailboxes"),
    Target("mime_limits", mime_seeds, check_mime_limits,
           "mime_limits.check_limits and parse_message (default and tight limits)"),
    Target("mime", lambda: mime_seeds() + _smime_seeds(), check_mime_entity,
           "smime.mime.parse_entity, classify, split_signed, pkcs7_der"),
    Target("cms", cms_seeds, _cms_bytes, "envelope.decrypt and signature.verify on one blob"),
    Target("unwrap", _smime_seeds, check_unwrap, "unwrap.unwrap on whole S/MIME messages"),
    Target("formats", _formats_seeds, _formats_bytes, "HPRIM (+ conversion), XDM, XML/CDA"),
    Target("charset", _charset_seeds, _charset_bytes, "decode_text, encode_for_apicrypt"),
    Target("imap", lambda: [*IMAP_SEEDS, *mime_seeds()[:3]], _imap_bytes,
           "imap_in response readers and envelope_of"),
)}
