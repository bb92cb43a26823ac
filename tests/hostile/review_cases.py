"""The families of the security review, a category each: the CBC padding oracle ("oracle"),
identity binding of certificates ("identity"), what the re-sealed headers say ("headers") and
session exhaustion ("exhaustion").

Rules kept here:
- oracle: after a CBC decryption, every failure (bad padding, garbage content, no or a bad
  signature, a policy refusal) gets the one reply ``550 5.7.0`` on the wire; the precise cause
  is only in the log. Ciphertexts are OpenSSL's, then changed at the block level the way the
  attack does it (a chosen IV, one block, a flipped byte).
- identity: RFC 5280 §4.2.1.10 name constraints bind the subject DN's emailAddress too; with
  rfc822Name SANs the DN address is no identity. Refusals are ``550 5.7.7`` (read from the log
  under the uniform reply, as for the ``cert`` category).
- headers: the relayed From never shows a name that reads as another address or another known
  person; a Bcc recipient's certificate is in no other reader's envelope; a receipt request
  goes only to the signer; nothing of the client's address is written.
- exhaustion: commands without a transaction are bounded (``max_idle_commands``, default 100);
  the bound closes the session with ``421 4.7.0``; a transaction resets it.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config.settings import GatewaySettings, default_of
from gateway.smime import certgen
from gateway.smime.certgen import Issued
from tests.hostile.case import Case, Dialogue, dialogue_case, ex, message_case
from tests.hostile.cms_cases import (
    TEXT,
    Node,
    encrypted_content_info,
    mutated_env,
    outer,
    pkcs7_entity,
)
from tests.hostile.world import (
    CRLF,
    JEAN,
    LABO,
    MARIE,
    MARIE_ON_APICRYPT,
    SECRETARIAT,
    SECRETARIAT_ON_APICRYPT,
    World,
)
from tests.messages import open_as_recipient

CASES: list[Case] = []
UNIFORM = "550 5.7.0"
NOW = dt.datetime.now(dt.UTC)
JEAN_ALIAS = b"<jean.dupont.apicrypt@passerelle.mssante.fr>"
IDLE_LIMIT: int = default_of(GatewaySettings, "max_idle_commands")


def case(category: str, name: str, outcome: str, build: Callable[[World], bytes],
         **kw: Any) -> None:
    CASES.append(message_case(category, name, outcome, build, **kw))


# --- oracle -----------------------------------------------------------------------------------

def _blocks(change: Callable[[bytes, bytes], tuple[bytes, bytes]]) -> Callable[[Node], None]:
    """Change (IV, ciphertext) of the EnvelopedData as the attack does."""
    def mutate(tree: Node) -> None:
        info = encrypted_content_info(tree)
        iv, ciphertext = info[1][1].octets, info[2].octets
        new_iv, new_ciphertext = change(iv, ciphertext)
        info[1].children[1] = Node(0x04, new_iv)
        info.children[2] = Node(0x80, new_ciphertext)
    return mutate


def _xor_at(data: bytes, index: int, mask: int) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


# The padding byte of the last block is 1..16: XORed with these it is over 16, always invalid.
for _mask in (0x20, 0x40, 0x60, 0x80, 0xA0, 0xC0, 0xE0, 0xFF):
    case("oracle", f"bad padding (last byte ^ 0x{_mask:02x})", UNIFORM, mutated_env(
        _blocks(lambda iv, c, m=_mask: (iv, _xor_at(c, len(c) - 17, m)))))
# Valid padding, content garbled (a block flipped before the last two) or changed bit-exactly
# (the IV flips the first block's bits): the same reply as bad padding.
for _label, _index in (("block -3", -33), ("block -4", -49), ("block 2", 16)):
    case("oracle", f"good padding, {_label} garbled", UNIFORM, mutated_env(
        _blocks(lambda iv, c, i=_index: (iv, _xor_at(c, i % len(c), 0x01)))))
case("oracle", "IV turns the first header line into body text", UNIFORM, mutated_env(
    _blocks(lambda iv, c: (_xor_at(iv, 12, 0x10), c))))  # "MIME-Version:" -> "MIME-Version*"
# The attack's query: one block under a chosen IV. With the previous block as IV it decrypts to
# the real last block (valid padding); with that IV changed, the padding is wrong.
case("oracle", "one block, its real IV (valid padding)", UNIFORM, mutated_env(
    _blocks(lambda iv, c: (c[-32:-16], c[-16:]))))
case("oracle", "one block, chosen IV (bad padding)", UNIFORM, mutated_env(
    _blocks(lambda iv, c: (_xor_at(c[-32:-16], 15, 0x80), c[-16:]))))
case("oracle", "one block, zero IV", UNIFORM, mutated_env(
    _blocks(lambda iv, c: (bytes(16), c[-16:]))))
case("oracle", "two blocks, random IV", UNIFORM, mutated_env(
    _blocks(lambda iv, c: (os.urandom(16), c[-32:]))))


def _sealed_raw(entity: Callable[[World], bytes]) -> Callable[[World], bytes]:
    """``entity`` encrypted (CBC) for the gateway as it is: no signature added."""
    return lambda w: outer(w, pkcs7_entity(w.encrypt_der(entity(w))))


# Decryption went well; what is inside fails: still the one reply.
case("oracle", "decrypts to unsigned text", UNIFORM, _sealed_raw(lambda w: TEXT))
case("oracle", "decrypts to a tampered signature", UNIFORM, _sealed_raw(
    lambda w: w.sign(TEXT).replace(b"patient stable", b"patient decede")))
case("oracle", "decrypts to a signature by another user", UNIFORM, _sealed_raw(
    lambda w: w.sign(TEXT, LABO)))
case("oracle", "decrypts to a SHA-1 signature", UNIFORM, _sealed_raw(
    lambda w: w.sign(TEXT, md="sha1")))
case("oracle", "decrypts to bytes that are not MIME", UNIFORM, _sealed_raw(
    lambda w: b"\x00\xff" * 64))


# --- identity -----------------------------------------------------------------------------------

def _constrained(permitted: Sequence[str] = (), excluded: Sequence[str] = ()
                 ) -> Callable[[World], Issued]:
    """A sub-CA of the apicrypt issuing CA with rfc822Name constraints (made once)."""
    def make(w: World) -> Issued:
        def build(w: World) -> Issued:
            return certgen.make_ca(
                "Constrained " + ",".join(permitted or excluded), issuer=w.issuing_ca("apicrypt"),
                name_constraints=x509.NameConstraints(
                    permitted_subtrees=[x509.RFC822Name(p) for p in permitted] or None,
                    excluded_subtrees=[x509.RFC822Name(e) for e in excluded] or None))
        return w.once(f"constrained-{permitted}-{excluded}", build)
    return make


def _leaf(issuer: Issued, dn_email: str | None, san: Sequence[str]) -> Issued:
    """An S/MIME leaf with ``dn_email`` as the subject's emailAddress and ``san`` rfc822Names."""
    key = certgen.new_key()
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, "Hostile")]
    if dn_email:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, dn_email))
    builder = (
        x509.CertificateBuilder().subject_name(x509.Name(attributes))
        .issuer_name(issuer.certificate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.key.public_key()), critical=False)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(a) for a in san]), critical=False)
    return Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def _identity(name: str, sender: str, dn_email: str | None, san: Sequence[str],
              ca: Callable[[World], Issued] | None = None) -> Callable[[World], bytes]:
    def build(w: World) -> bytes:
        def make(w: World) -> tuple[Issued, Sequence[x509.Certificate]]:
            issuer = ca(w) if ca else w.issuing_ca("apicrypt")
            return _leaf(issuer, dn_email, san), ((issuer.certificate,) if ca else ())
        w.issue(f"identity-{name}", make)
        return w.message(TEXT, signer=f"identity-{name}", sender=sender)
    return build


def identity(name: str, outcome: str, sender: str, dn_email: str | None,
             san: Sequence[str] = (), ca: Callable[[World], Issued] | None = None) -> None:
    case("identity", name, outcome, _identity(name, sender, dn_email, san, ca), sender=sender)


LABO59 = _constrained(permitted=["labo59.apicrypt.org"])
identity("DN email outside the sub-CA's permitted domain", "550 5.7.7", JEAN, JEAN, ca=LABO59)
identity("DN email upper-cased outside the permitted domain", "550 5.7.7", JEAN, JEAN.upper(),
         ca=LABO59)
identity("SAN outside the sub-CA's permitted domain", "550 5.7.7", JEAN, None, [JEAN],
         ca=LABO59)
identity("DN email inside the permitted domain", "250 2.0.0", LABO, LABO, ca=LABO59)
identity("SAN inside the permitted domain, DN email outside", "550 5.7.7", LABO, JEAN, [LABO],
         ca=LABO59)
identity("permitted subdomains (leading dot) cover medical59", "250 2.0.0", JEAN, None, [JEAN],
         ca=_constrained(permitted=[".apicrypt.org"]))
identity("one permitted mailbox, another address", "550 5.7.7", JEAN, JEAN,
         ca=_constrained(permitted=[LABO]))
identity("excluded domain in the DN email", "550 5.7.7", JEAN, JEAN,
         ca=_constrained(excluded=["medical59.apicrypt.org"]))
identity("excluded domain in the SAN", "550 5.7.7", JEAN, None, [JEAN],
         ca=_constrained(excluded=["medical59.apicrypt.org"]))
identity("with a SAN, the DN email is no identity", "550 5.7.7", JEAN, JEAN, [LABO])
identity("the SAN is the identity, whatever the DN says", "250 2.0.0", JEAN, LABO, [JEAN])
identity("DN email only (no SAN) is the identity", "250 2.0.0", JEAN, JEAN)


# --- headers ------------------------------------------------------------------------------------

def _relayed_from(expected: bytes) -> Callable[[World, list[bytes]], None]:
    def check(w: World, relayed: list[bytes]) -> None:
        [raw] = relayed
        head = raw.partition(b"\r\n\r\n")[0] + CRLF
        lines = [line for line in head.split(CRLF) if line.startswith(b"From:")]
        assert lines == [b"From: " + expected], lines
    return check


def _from(display: str) -> Callable[[World], bytes]:
    return lambda w: (f"From: {display} <{JEAN}>\r\n".encode()
                      + w.headers(extra="").split(CRLF, 1)[1] + w.sealed(TEXT))


for _label, _name in (
        ("another known person's name", "Marie Curie"),
        ("another known person, other order and title", '"Pr CURIE, Marie"'),
        ("another known person, accented and encoded", "=?utf-8?q?Marie_Cur=C3=ADe?="),
        ("another known person in full-width letters", "Ｍａｒｉｅ Ｃｕｒｉｅ"),
        ("an address with a small at sign", '"marie.curie\ufe6bhopital-test.mssante.fr"'),
        ("an address in a base64 encoded word",
         "=?utf-8?b?bWFyaWUuY3VyaWVAaG9waXRhbC10ZXN0Lm1zc2FudGUuZnI=?=")):
    case("headers", f"display name: {_label}", "250 2.0.0", _from(_name),
         check=_relayed_from(JEAN_ALIAS))
case("headers", "display name: the signer's own name is kept", "250 2.0.0",
     _from("Dr Jean Dupont"), check=_relayed_from(b"Dr Jean Dupont " + JEAN_ALIAS))


def _head_lacks(*needles: bytes) -> Callable[[World, list[bytes]], None]:
    def check(w: World, relayed: list[bytes]) -> None:
        for raw in relayed:
            head = raw.partition(b"\r\n\r\n")[0]
            for needle in needles:
                assert needle not in head, needle
    return check


case("headers", "a receipt request to a third party is dropped", "250 2.0.0",
     lambda w: w.message(TEXT, extra=f"Disposition-Notification-To: {LABO}\r\n"),
     check=_head_lacks(b"Disposition-Notification-To", LABO.encode()))
case("headers", "nothing of the client or the signer's certificate in clear", "250 2.0.0",
     lambda w: w.message(TEXT), check=_head_lacks(b"127.0.0.1", JEAN.encode(),
                                                  b"smime-serial"))


def _bcc_copies(w: World, relayed: list[bytes]) -> None:
    """Two copies: Marie's opens for her and names no secretariat; the secretariat's (the Bcc)
    opens with its own key only."""
    assert len(relayed) == 2
    marie = next(r for r in relayed if b"secretariat" not in r.partition(b"\r\n\r\n")[0])
    assert b"secretariat" not in open_as_recipient(w.pki, MARIE, marie).headers
    other = relayed[1 - relayed.index(marie)]
    assert open_as_recipient(w.pki, SECRETARIAT, other).content
    try:
        open_as_recipient(w.pki, SECRETARIAT, marie)
    except RuntimeError:
        return
    raise AssertionError("the Bcc recipient could open the To recipient's copy")


case("headers", "a Bcc recipient gets a copy of its own", "250 2.0.0",
     lambda w: w.message(TEXT), rcpts=(MARIE_ON_APICRYPT, SECRETARIAT_ON_APICRYPT), relays=2,
     check=_bcc_copies)


def _protected(to: str) -> bytes:
    return (f"To: {to}\r\nSubject: protege\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "\r\nINR 2,2\r\n").encode()


case("headers", "signed for Marie, replayed to the secretariat", UNIFORM,
     lambda w: w.message(_protected(MARIE_ON_APICRYPT)), rcpts=(SECRETARIAT_ON_APICRYPT,))
case("headers", "signed for Marie, Marie and a replayed Bcc", UNIFORM,
     lambda w: w.message(_protected(MARIE_ON_APICRYPT)),
     rcpts=(MARIE_ON_APICRYPT, SECRETARIAT_ON_APICRYPT))
case("headers", "signed for Marie, sent to Marie", "250 2.0.0",
     lambda w: w.message(_protected(MARIE_ON_APICRYPT)))
case("headers", "a signed message/rfc822 from another author", UNIFORM,
     lambda w: w.message(b"Content-Type: message/rfc822\r\n\r\n" + (
         f"From: {LABO}\r\nSubject: x\r\n\r\nINR 2,2\r\n").encode()))


# --- exhaustion ---------------------------------------------------------------------------------

def dialogue(name: str, outcome: str, build: Callable[[World], Dialogue], **kw: Any) -> None:
    CASES.append(dialogue_case("exhaustion", name, outcome, build, **kw))


CLOSING = "421 4.7.0"
for _verb in ("NOOP", "RSET", "NOOP keepalive"):
    dialogue(f"{IDLE_LIMIT + 1} x {_verb} after TLS", CLOSING, lambda w, v=_verb: [
        ex(f"{v}\r\n".encode() * (IDLE_LIMIT + 1), *["250"] * IDLE_LIMIT, CLOSING, "closed")],
        closes=True)
# Before TLS only NOOP is allowed (RFC 3207: others get 530, and the STARTTLS deadline
# bounds those): plain NOOPs are bounded as well.
for _verb in ("NOOP", "NOOP keepalive"):
    dialogue(f"{IDLE_LIMIT + 1} x {_verb} before TLS", CLOSING, lambda w, v=_verb: [
        ex(f"{v}\r\n".encode() * (IDLE_LIMIT + 1), *["250"] * IDLE_LIMIT, CLOSING, "closed")],
        closes=True, tls=False)
dialogue("NOOP and RSET alternating past the bound", CLOSING, lambda w: [
    ex(b"NOOP\r\nRSET\r\n" * ((IDLE_LIMIT + 2) // 2), *["250"] * IDLE_LIMIT, CLOSING,
       "closed")], closes=True)
dialogue("HELP past the bound", CLOSING, lambda w: [
    ex(b"HELP\r\n" * (IDLE_LIMIT + 1), *["250"] * IDLE_LIMIT, CLOSING, "closed")],
    closes=True)
dialogue("VRFY past the bound", CLOSING, lambda w: [
    ex(f"VRFY <{JEAN}>\r\n".encode() * (IDLE_LIMIT + 1), *["252"] * IDLE_LIMIT, CLOSING,
       "closed")], closes=True)
dialogue("one under the bound stays open", "250", lambda w: [
    ex(b"NOOP\r\n" * (IDLE_LIMIT - 1), *["250"] * (IDLE_LIMIT - 1))])
dialogue("a transaction resets the count", "250 2.1.0", lambda w: [
    ex(b"NOOP\r\n" * (IDLE_LIMIT - 1), *["250"] * (IDLE_LIMIT - 1)),
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0"),
    ex(b"NOOP\r\n" * (IDLE_LIMIT - 2), *["250"] * (IDLE_LIMIT - 2))])
dialogue("RSET after a transaction counts again", CLOSING, lambda w: [
    ex(f"MAIL FROM:<{JEAN}>\r\n".encode(), "250 2.1.0"),
    ex(b"RSET\r\n" * (IDLE_LIMIT + 1), *["250"] * IDLE_LIMIT, CLOSING, "closed")],
    closes=True)
