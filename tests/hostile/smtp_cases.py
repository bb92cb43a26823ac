"""SMTP framing cases: smuggling, bare CR/LF, NUL, overlong lines, pipelining, 8-bit envelopes,
recipient floods, commands before STARTTLS, odd commands.

Rule kept here: a message end is only ``CRLF.CRLF``; whatever else looks like one stays inside
the content, where the listener refuses it (bare CR/LF ``550 5.5.2``, NUL ``550 5.6.0``), so a
smuggled second message is never relayed (the smuggled part is a genuine sealed message: had it
been taken for a transaction, the next hop would have received it). Every case ends with the
session still in step (a NOOP answered) unless the connection is meant to close.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.hostile.case import Case, Dialogue, Exchange, dialogue_case, ex
from tests.hostile.world import (
    JEAN,
    MARIE,
    MARIE_ON_APICRYPT,
    RCPT,
    SECRETARIAT_ON_APICRYPT,
    SENDER,
    World,
    text_entity,
)

CATEGORY = "smtp"
CLEAR = (f"From: {JEAN}\r\nTo: {MARIE_ON_APICRYPT}\r\nSubject: clair\r\n\r\n"
         "texte en clair\r\n").encode()
ENVELOPE = f"MAIL FROM:<{JEAN}>\r\nRCPT TO:<{MARIE_ON_APICRYPT}>\r\nDATA\r\n".encode()


def _envelope() -> Exchange:
    return ex(ENVELOPE, "250 2.1.0", "250 2.1.5", "354")


def _genuine(w: World, tag: str = "x", network: str = "apicrypt") -> bytes:
    return w.once(f"smtp-genuine-{network}-{tag}", lambda w: w.message(
        text_entity(f"message {tag}\n"), network, message_id=f"<smtp-{tag}@example.test>"))


def _smuggled(w: World) -> bytes:
    """A second transaction carrying a genuine message, up to (not including) the final dot
    line: relayed only if it were taken for a transaction of its own."""
    return ENVELOPE + _genuine(w, "smuggled")


CASES: list[Case] = []


def case(name: str, outcome: str, build: Callable[[World], Dialogue], **kw: Any) -> None:
    CASES.append(dialogue_case(CATEGORY, name, outcome, build, **kw))


# --- smuggling: an end of data that is not CRLF.CRLF --------------------------------------

SMUGGLING = {
    "LF.CRLF": (b"\n.\r\n", "550 5.5.2"),
    "CRLF.LF": (b"\r\n.\n", "550 5.5.2"),
    "LF.LF": (b"\n.\n", "550 5.5.2"),
    "CR.CRLF": (b"\r.\r\n", "550 5.5.2"),
    "CR.CR": (b"\r.\r", "550 5.5.2"),
    "CRLF.CR": (b"\r\n.\r", "550 5.5.2"),
    "CRLF.CRCRLF": (b"\r\n.\r\r\n", "550 5.5.2"),
    "CRLF.LFCRLF": (b"\r\n.\n\r\n", "550 5.5.2"),
    "NUL.CRLF": (b"\x00.\r\n", "550 5.6.0"),
    "CRLF-NUL.CRLF": (b"\r\n\x00.\r\n", "550 5.6.0"),
    "CRLF.NUL-CRLF": (b"\r\n.\x00\r\n", "550 5.6.0"),
    # no end at all: the smuggled text is content of a clear (unencrypted) message
    "CRLF.SP-CRLF": (b"\r\n. \r\n", "550 5.7.5"),
    "CRLF..CRLF (stuffed)": (b"\r\n..\r\n", "550 5.7.5"),
    "CRLF-ONE-DOT-LEADER-CRLF": ("\r\n\u2024\r\n".encode(), "550 5.7.5"),
}


def _smuggle(sep: bytes, expected: str, genuine: bool) -> Callable[[World], Dialogue]:
    def build(w: World) -> Dialogue:
        first = _genuine(w, "first") if genuine else CLEAR
        if first.endswith(b"\r\n") and sep.startswith((b"\r", b"\n", b"\x00")):
            first = first[:-2]  # the separator brings its own line end
        return [_envelope(), ex(first + sep + _smuggled(w) + b".\r\n", expected)]
    return build


for _name, (_sep, _expected) in SMUGGLING.items():
    case(f"smuggle {_name}", _expected, _smuggle(_sep, _expected, genuine=False))
for _name in ("LF.CRLF", "LF.LF", "NUL.CRLF"):
    _sep, _expected = SMUGGLING[_name]
    case(f"smuggle {_name} after a genuine message", _expected,
         _smuggle(_sep, _expected, genuine=True))

# A real end (CRLF.CRLF) after a bare CR or LF: the content is refused, and what follows is a
# real pipelined transaction, relayed as such (no smuggling: the client ended the data).
def _real_end(sep: bytes) -> Callable[[World], Dialogue]:
    return lambda w: [_envelope(), ex(CLEAR[:-2] + sep + _smuggled(w) + b".\r\n", "550 5.5.2",
                                      "250 2.1.0", "250 2.1.5", "354", "250 2.0.0")]


for _name, _sep in (("CR", b"\r\r\n.\r\n"), ("LF", b"\n\r\n.\r\n")):
    case(f"real end after a bare {_name}, then a real transaction", "550 5.5.2",
         _real_end(_sep), relays=1)

case("smuggle LF.LF in one pipelined write with a NOOP behind", "550 5.5.2", lambda w: [
    ex(ENVELOPE + CLEAR + b"\n.\n" + _smuggled(w) + b".\r\nNOOP\r\n",
       "250 2.1.0", "250 2.1.5", "354", "550 5.5.2", "250")])


# --- bare CR / LF and NUL in content --------------------------------------------------------

def _content(data: Callable[[World], bytes], expected: str) -> Callable[[World], Dialogue]:
    def build(w: World) -> Dialogue:
        content = data(w)
        if not content.endswith(b"\r\n"):
            content += b"\r\n"  # the end of data must stay CRLF.CRLF
        return [_envelope(), ex(content + b".\r\n", expected)]
    return build


def _lf_only(w: World) -> bytes:
    return _genuine(w).replace(b"\r\n", b"\n")[:-1] + b"\r\n"


BARE = {
    "bare LF in a header": (lambda w: b"From: a@b.example\nBcc: x@y.example\r\n\r\nx\r\n",
                            "550 5.5.2"),
    "bare CR in a header": (lambda w: b"Subject: a\rInjected: yes\r\n\r\nx\r\n", "550 5.5.2"),
    "bare LF in a genuine body": (lambda w: _genuine(w).replace(b"\r\n", b"\n", 12),
                                  "550 5.5.2"),
    # LF only: no CRLF at all, so the whole message is one line, over the line limit
    "LF-only line ends": (_lf_only, "500 5.5.2"),
    "CR before the final CRLF": (lambda w: _genuine(w)[:-2] + b"\r\r\n", "550 5.5.2"),
    "NUL in a header": (lambda w: b"Subject: a\x00b\r\n\r\nx\r\n", "550 5.6.0"),
    "NUL in a genuine body": (lambda w: _genuine(w).replace(b"\r\n\r\n", b"\r\n\r\n\x00", 1),
                              "550 5.6.0"),
}
for _name, (_data, _expected) in BARE.items():
    case(_name, _expected, _content(_data, _expected))

case("empty content", "550 5.7.5", lambda w: [_envelope(), ex(b".\r\n", "550 5.7.5")])


# --- line and command lengths ---------------------------------------------------------------

def _line(n: int) -> bytes:
    return CLEAR + b"x" * n + b"\r\n"


case("text line of 998 octets (the limit)", "550 5.7.5", _content(lambda w: _line(998),
                                                                   "550 5.7.5"))
case("text line of 1000 octets", "500 5.5.2", _content(lambda w: _line(1000), "500 5.5.2"))
case("2 MB line without a line end", "500 5.5.2", _content(
    lambda w: CLEAR + b"y" * 2_000_000 + b"\r\n", "500 5.5.2"))
case("over-long line inside a genuine message", "500 5.5.2", _content(
    lambda w: _genuine(w).replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * 1200 + b"\r\n\r\n", 1),
    "500 5.5.2"))
case("content over max_message_bytes", "552 5.3.4", _content(
    lambda w: CLEAR + (b"z" * 998 + b"\r\n") * 4300, "552 5.3.4"))
case("MAIL with SIZE over the limit", "552 5.3.4", lambda w: [
    ex(f"MAIL FROM:<{JEAN}> SIZE=30000000\r\n".encode(), "552 5.3.4")])
case("MAIL command of 600 octets", "500 5.5.2", lambda w: [
    ex(b"MAIL FROM:<" + b"a" * 560 + b"@medical59.apicrypt.org>\r\n", "500 5.5.2")])
case("RCPT command of 2000 octets", "500 5.5.2", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0"),
    ex(b"RCPT TO:<" + b"a" * 1960 + b"@passerelle.apicrypt.org>\r\n", "500 5.5.2")])
case("unknown command of 100 kB", "500 5.5.2", lambda w: [
    ex(b"X" * 100_000 + b"\r\n", "500 5.5.2")])
case("local part of 300 octets", "553 5.1.3", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0"),
    ex(b"RCPT TO:<" + b"m" * 300 + b".mssante@passerelle.apicrypt.org>\r\n", "553 5.1.3")])


# --- pipelining -----------------------------------------------------------------------------

case("whole genuine transaction in one write", "250 2.0.0", lambda w: [
    ex(ENVELOPE + _genuine(w) + b".\r\n", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0")],
    relays=1)
case("two genuine transactions in one write", "250 2.0.0", lambda w: [
    ex(ENVELOPE + _genuine(w, "a") + b".\r\n" + ENVELOPE + _genuine(w, "b") + b".\r\n",
       "250 2.1.0", "250 2.1.5", "354", "250 2.0.0",
       "250 2.1.0", "250 2.1.5", "354", "250 2.0.0")], relays=2)
case("content sent before the 354", "250 2.0.0", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0"),
    ex(f"RCPT TO:<{MARIE_ON_APICRYPT}>\r\n".encode(), "250 2.1.5"),
    ex(b"DATA\r\n" + _genuine(w) + b".\r\nNOOP\r\n", "354", "250 2.0.0", "250")], relays=1)
case("DATA after a refused RCPT: content read as commands", "503 5.5.1", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n".encode()
       + b"Subject: x\r\nhello\r\n.\r\n",
       "250 2.1.0", "550 5.7.1", "503 5.5.1", "500 5.5.1", "500 5.5.1", "500 5.5.1")])
case("nested MAIL", "503", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\nMAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0", "503")])
case("RCPT before MAIL", "503", lambda w: [
    ex(f"RCPT TO:<{MARIE_ON_APICRYPT}>\r\n".encode(), "503")])
case("300 NOOPs in one write: 100 answered, then closed", "421 4.7.0", lambda w: [
    ex(b"NOOP\r\n" * 300, *["250"] * 100, "421 4.7.0", "closed")], closes=True)
case("commands after QUIT in the same write", "closed", lambda w: [
    ex(f"QUIT\r\nMAIL FROM:<{JEAN}>\r\n".encode(), "221", "closed")], closes=True)
case("five unknown commands: goodbye", "502 5.5.1", lambda w: [
    ex(b"XYZZY\r\n" * 5, *["500 5.5.1"] * 4, "502 5.5.1", "closed")], closes=True)
case("client leaves in the middle of a genuine message", "354", lambda w: [
    _envelope(), Exchange(_genuine(w)[: len(_genuine(w)) // 2])], closes=True)


# --- 8-bit and odd envelopes ----------------------------------------------------------------

case("8-bit MAIL address (latin-1)", "553 5.6.7", lambda w: [
    ex(b"MAIL FROM:<j\xe9an.dupont@medical59.apicrypt.org>\r\n", "553 5.6.7")])
case("8-bit RCPT address", "553 5.6.7", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0"),
    ex("RCPT TO:<marie.curie.mssante@passerelle.apicrypt.orgé>\r\n".encode(), "553 5.6.7")])
case("full-width letters in the RCPT domain", "553 5.6.7", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0"),
    ex("RCPT TO:<marie.curie.mssante@ｐasserelle.apicrypt.org>\r\n".encode(), "553 5.6.7")])
case("8-bit EHLO", "553 5.6.7", lambda w: [ex("EHLO hôte.example\r\n".encode(), "553 5.6.7")])
case("8-bit command verb", "500", lambda w: [ex(b"M\xc1IL FROM:<x@y.example>\r\n", "500")])
case("MAIL with SMTPUTF8 (not offered)", "501", lambda w: [
    ex(f"MAIL FROM:<{JEAN}> SMTPUTF8\r\n".encode(), "501")])
case("null sender", "550 5.7.1", lambda w: [ex(b"MAIL FROM:<>\r\n", "550 5.7.1")])
case("NUL in the MAIL address", "553 5.1.7", lambda w: [
    ex(b"MAIL FROM:<jean.dupont\x00@medical59.apicrypt.org>\r\n", "553 5.1.7")])
case("sender of the other network", "550 5.7.1", lambda w: [
    ex(f"MAIL FROM:<{MARIE}>\r\n".encode(), "550 5.7.1")])
# The gateway's address book alias of a user of the other network is not a sender.
case("sender is an address-book alias of the gateway", "550 5.7.1", lambda w: [
    ex(f"MAIL FROM:<{MARIE_ON_APICRYPT}>\r\n".encode(), "550 5.7.1")])

RCPT_CASES = {
    "foreign domain (open relay)": (b"victim@example.com", "550 5.7.1"),
    "percent hack": (b"victim%hopital-test.mssante.fr@passerelle.apicrypt.org", "553 5.1.3"),
    "bang path": (b"hopital-test.mssante.fr!victim@passerelle.apicrypt.org", "553 5.1.3"),
    "quoted local part": (b'"victim@hopital-test.mssante.fr"@passerelle.apicrypt.org',
                          "553 5.1.3"),
    "address literal": (b"user@[127.0.0.1]", "553 5.1.3"),
    "source route (dropped)": (b"@relay.example:" + MARIE_ON_APICRYPT.encode(), "250 2.1.5"),
    "a user of the source network": (JEAN.encode(), "550 5.7.1"),
    "alias chain": (b"x.mssante.mssante@passerelle.apicrypt.org", "550 5.7.1"),
    "NOTIFY parameter (DSN not offered)": (MARIE_ON_APICRYPT.encode() + b"> NOTIFY=NEVER",
                                           "555"),
}
def _rcpt(address: bytes, expected: str) -> Callable[[World], Dialogue]:
    closing = b"" if b">" in address else b">"  # the NOTIFY case closes it itself
    return lambda w: [ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0"),
                      ex(b"RCPT TO:<" + address + closing + b"\r\n", expected)]


for _name, (_addr, _expected) in RCPT_CASES.items():
    case(f"RCPT {_name}", _expected, _rcpt(_addr, _expected))

case("sender of apicrypt into the mssante listener", "550 5.7.1", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "550 5.7.1")], network="mssante")


# --- recipient floods -----------------------------------------------------------------------

case("51 recipients", "452 4.5.3", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0"),
    ex(f"RCPT TO:<{MARIE_ON_APICRYPT}>\r\n".encode() * 51, *["250 2.1.5"] * 50, "452 4.5.3")])
case("500 recipients in one write", "452 4.5.3", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0"),
    ex(f"RCPT TO:<{MARIE_ON_APICRYPT}>\r\n".encode() * 500,
       *["250 2.1.5"] * 50, *["452 4.5.3"] * 450)])
case("200 refused recipients then a good one", "550 5.7.1", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0"),
    ex(b"".join(b"RCPT TO:<v%d@example.com>\r\n" % i for i in range(200)),
       *["550 5.7.1"] * 200),
    ex(f"RCPT TO:<{MARIE_ON_APICRYPT}>\r\n".encode(), "250 2.1.5")])
case("50 copies of one recipient: one delivery", "250 2.0.0", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode() + f"RCPT TO:<{MARIE_ON_APICRYPT}>\r\n".encode() * 50
       + b"DATA\r\n", "250 2.1.0", *["250 2.1.5"] * 50, "354"),
    ex(_genuine(w) + b".\r\n", "250 2.0.0")], relays=1)
case("two recipients named in To and Cc: one delivery to both", "250 2.0.0", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\nRCPT TO:<{MARIE_ON_APICRYPT}>\r\n"
       f"RCPT TO:<{SECRETARIAT_ON_APICRYPT}>\r\nDATA\r\n".encode(),
       "250 2.1.0", "250 2.1.5", "250 2.1.5", "354"),
    ex(w.once("smtp-genuine-cc", lambda w: w.message(
        text_entity("message cc\n"), extra=f"Cc: {SECRETARIAT_ON_APICRYPT}\r\n"))
       + b".\r\n", "250 2.0.0")], relays=1)
case("two recipients, the second a Bcc: a sealed copy each", "250 2.0.0", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\nRCPT TO:<{MARIE_ON_APICRYPT}>\r\n"
       f"RCPT TO:<{SECRETARIAT_ON_APICRYPT}>\r\nDATA\r\n".encode(),
       "250 2.1.0", "250 2.1.5", "250 2.1.5", "354"),
    ex(_genuine(w) + b".\r\n", "250 2.0.0")], relays=2)


# --- before STARTTLS (no TLS from the rig) ----------------------------------------------------

def _plain(*steps: Exchange) -> Callable[[World], Dialogue]:
    return lambda w: [ex(b"EHLO client.test\r\n", "250"), *steps]


for _verb in (f"MAIL FROM:<{JEAN}>", "DATA", "AUTH PLAIN AGFiAGM=", "XYZZY"):
    case(f"{_verb.split()[0]} before STARTTLS", "530 5.7.0",
         _plain(ex(_verb.encode() + b"\r\n", "530 5.7.0")), tls=False)

case("a whole transaction in clear", "530 5.7.0", lambda w: [
    ex(b"EHLO client.test\r\n" + ENVELOPE + CLEAR + b".\r\n", "250", *["530 5.7.0"] * 6,
       "500", "530 5.7.0", "530 5.7.0")], tls=False)
case("STARTTLS with commands pipelined behind it (injection)", "250 2.1.0", lambda w: [
    ex(b"EHLO client.test\r\n", "250"),
    ex(f"STARTTLS\r\nMAIL FROM:<{JEAN}>\r\n".encode(), "220", upgrade=True),
    ex(b"EHLO client.test\r\n", "250"),
    # had the clear MAIL survived the handshake, this would be "503 nested MAIL"
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0")], tls=False)
case("STARTTLS before EHLO (allowed)", "250 2.1.0", lambda w: [
    ex(b"STARTTLS\r\n", "220", upgrade=True), ex(b"EHLO client.test\r\n", "250"),
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0")], tls=False)
case("STARTTLS with an argument", "501", _plain(ex(b"STARTTLS now\r\n", "501")), tls=False)
case("garbage instead of a TLS handshake", "220", lambda w: [
    ex(b"EHLO client.test\r\n", "250"), ex(b"STARTTLS\r\n", "220"),
    ex(b"GET / HTTP/1.0\r\n\r\n" * 20, "closed")], tls=False, closes=True)
case("a TLS ClientHello on the plain port", "500", lambda w: [
    ex(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(128, 160)) + b"\r\n",
       "500")], tls=False)
case("an HTTP request", "530 5.7.0", lambda w: [
    ex(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "530 5.7.0", "530 5.7.0", "500")], tls=False)
# aiosmtpd alone answered 220 and nested a second TLS layer (fixed in smtp_in).
case("STARTTLS twice", "503 5.5.1", lambda w: [ex(b"STARTTLS\r\n", "503 5.5.1")])


# --- odd commands after TLS -----------------------------------------------------------------

case("VRFY", "252", lambda w: [ex(f"VRFY {JEAN}\r\n".encode(), "252")])
# aiosmtpd alone offered AUTH LOGIN PLAIN and prompted for credentials (fixed in smtp_in).
case("AUTH PLAIN (not offered)", "504 5.5.4", lambda w: [
    ex(b"AUTH PLAIN AGFiAGM=\r\n", "504 5.5.4")])
case("AUTH LOGIN gets no credential prompt", "504 5.5.4", lambda w: [
    ex(b"AUTH LOGIN\r\n", "504 5.5.4")])
case("PROXY header on a listener without PROXY", "500 5.5.1", lambda w: [
    ex(b"PROXY TCP4 10.0.0.1 10.0.0.2 1111 25\r\n", "500 5.5.1")])
case("bare LF ends commands", "250 2.1.5", lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\nRCPT TO:<{MARIE_ON_APICRYPT}>\n".encode(),
       "250 2.1.0", "250 2.1.5")])
# aiosmtpd echoed the unknown verb "NOOP<CR>MAIL" with its bare CR in the reply line
case("bare CR inside a command", "500 5.5.1", lambda w: [
    ex(f"NOOP\rMAIL FROM:<{JEAN}>\r\n".encode(), "500 5.5.1")])
case("lower-case commands", "250 2.1.5", lambda w: [
    ex(f"mail from:<{JEAN}>\r\nrcpt to:<{RCPT['apicrypt']}>\r\n".encode(),
       "250 2.1.0", "250 2.1.5")])
case("sender of mssante, genuine message, into mssante", "250 2.0.0", lambda w: [
    ex(f"MAIL FROM:<{SENDER['mssante']}>\r\nRCPT TO:<{RCPT['mssante']}>\r\nDATA\r\n".encode()
       + _genuine(w, "m", "mssante") + b".\r\n", "250 2.1.0", "250 2.1.5", "354",
       "250 2.0.0")], network="mssante", relays=1)
