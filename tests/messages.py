"""Messages as a user of either network would send them, made and read by OpenSSL's CLI.

The gateway's own code is not used here to build or open test messages: what the tests send is
what an independent implementation produced, and what they check is what it can read.
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

NETWORK_OF = {"apicrypt.org": "apicrypt", "mssante.fr": "mssante"}


def network_of(address: str) -> str:
    for suffix, name in NETWORK_OF.items():
        if address.endswith(suffix):
            return name
    raise ValueError(address)


@dataclass(frozen=True)
class Pki:
    """A development PKI written by ``gateway pki init``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "gateway.toml"

    def user_cert(self, address: str) -> Path:
        return self.root / network_of(address) / "users-keys" / f"{address}.pem"

    def user_key(self, address: str) -> Path:
        return self.root / network_of(address) / "users-keys" / f"{address}.key"

    def gateway_cert(self, network: str) -> Path:
        return self.root / network / "gateway.pem"

    def ca_file(self, network: str) -> Path:
        """Anchors plus intermediates, as openssl -CAfile wants them."""
        out = self.root / network / "ca-bundle-for-tests.pem"
        if not out.exists():
            parts = [self.root / network / "ca.pem"]
            if (self.root / network / "intermediate.pem").exists():
                parts.append(self.root / network / "intermediate.pem")
            out.write_bytes(b"".join(p.read_bytes() for p in parts))
        return out


def openssl(*args: str | Path, data: bytes) -> bytes:
    proc = subprocess.run(["openssl", *map(str, args)], input=data, capture_output=True,
                          timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} {args[1]} failed: {proc.stderr.decode()[-500:]}")
    return proc.stdout


def text_entity(text: str, charset: str = "iso-8859-1") -> bytes:
    body = text.replace("\r\n", "\n").replace("\n", "\r\n").encode(charset)
    return (f"Content-Type: text/plain; charset={charset}\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + body


def user_message(pki: Pki, sender: str, to: str, entity: bytes, *, subject: str = "Résultats",
                 signer: str | None = None, encrypt_for: Path | None = None,
                 extra_headers: str = "", message_id: str = "<test-1@example.test>") -> bytes:
    """``entity`` signed by ``signer`` (default: the sender) then encrypted for the gateway of
    the sender's network, with the message headers on top: what a user's client sends."""
    signer = signer or sender
    signed = openssl("cms", "-sign", "-signer", pki.user_cert(signer),
                      "-inkey", pki.user_key(signer), "-md", "sha256", "-binary",
                      "-outform", "SMIME", data=entity)
    recipient = encrypt_for or pki.gateway_cert(network_of(sender))
    enveloped = openssl("cms", "-encrypt", "-aes-256-cbc", "-binary", "-outform", "SMIME",
                         recipient, data=signed)
    headers = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
               f"Message-ID: {message_id}\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
               f"{extra_headers}")
    return headers.encode("utf-8") + enveloped.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass(frozen=True)
class Opened:
    headers: bytes  # outer header block of the relayed message
    content: bytes  # what the signature covers (the entity the recipient reads)
    signer_pem: bytes


def open_as_recipient(pki: Pki, recipient: str, raw: bytes) -> Opened:
    """Decrypt with the recipient's key and verify against its network's anchors (openssl).

    No ``-binary`` on verify: a multipart/signed part is verified in its canonical (CRLF) form,
    which is what a mail client does (RFC 8551 §3.1.1).
    """
    network = network_of(recipient)
    head, _, _ = raw.partition(b"\r\n\r\n")
    signed = openssl("cms", "-decrypt", "-recip", pki.user_cert(recipient),
                      "-inkey", pki.user_key(recipient), "-inform", "SMIME", data=raw)
    content = openssl("cms", "-verify", "-CAfile", pki.ca_file(network), "-inform", "SMIME",
                       "-purpose", "smimesign", data=signed)
    signer = openssl("cms", "-verify", "-CAfile", pki.ca_file(network), "-inform", "SMIME",
                      "-signer", "/dev/stdout", "-out", "/dev/null", data=signed)
    return Opened(head, content, signer)


def text_of(entity: bytes) -> str:
    """The first text/plain part of an entity, decoded (transfer encoding and charset)."""
    import email
    import email.policy

    msg = email.message_from_bytes(entity, policy=email.policy.default)
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            return str(part.get_content())  # type: ignore[attr-defined]
    raise AssertionError("no text/plain part")


def with_xdm(archive: bytes) -> bytes:
    """A multipart/mixed body carrying ``archive`` as IHE_XDM.ZIP after a line of text."""
    b64 = base64.encodebytes(archive).replace(b"\n", b"\r\n")
    return (b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nvoir XDM\r\n--b1\r\n"
            b'Content-Type: application/zip; name="IHE_XDM.ZIP"\r\n'
            b'Content-Disposition: attachment; filename="IHE_XDM.ZIP"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"--b1--\r\n")
