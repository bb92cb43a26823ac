"""Independent S/MIME implementations driven by subprocess, for interoperability tests.

Rule kept here: the gateway is only ever judged by tools it shares no code with. Each peer is
one of OpenSSL (``openssl cms`` / ``openssl smime``), NSS (``cmsutil``) or GnuPG (``gpgsm``),
run with a throw-away home (keys, databases, message files) in a folder given by the test,
every call bounded by a timeout. All of them expose the same small interface (``Peer``) so a
test can be parametrized over them:

* ``sign(content, detached) -> DER`` SignedData, SHA-256, RSA, by the peer's own user;
* ``encrypt(content, recipient_certs) -> DER`` EnvelopedData for those certificates;
* ``decrypt(der) -> content`` with the peer's own key;
* ``verify(der, content) -> content``: the signed content when the signature is good *and*
  the signer chains to the peer's trust anchors; ``SignatureNotGood`` otherwise.

Content is always handled as binary (CRLF and 8-bit bytes must come back unchanged): files on
disk, never text mode, never MIME canonicalisation by the tool.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from gateway.smime.model import Identity

TIMEOUT = 30.0  # seconds per tool call: a hung tool fails the test instead of the run
_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER


class PeerError(Exception):
    """The tool failed (non-zero exit, missing output, timeout)."""


class SignatureNotGood(PeerError):
    """The tool ran but did not report the signature as good and trusted."""


class Peer(Protocol):
    name: str
    identity: Identity

    def sign(self, content: bytes, detached: bool) -> bytes: ...
    def encrypt(self, content: bytes, recipient_certs: Sequence[x509.Certificate]) -> bytes: ...
    def decrypt(self, der: bytes) -> bytes: ...
    def verify(self, der: bytes, content: bytes | None) -> bytes: ...
    def close(self) -> None: ...


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-1 fingerprint in upper-case hex: how gpgsm and NSS name certificates."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - a name, not security


def tool_available(name: str) -> bool:
    tools = {"openssl": ["openssl"], "nss": ["cmsutil", "certutil", "pk12util"],
             "gpgsm": ["gpgsm", "gpgconf", "gpg-agent"]}
    return all(shutil.which(t) for t in tools[name])


class _Base:
    """Home folder, numbered scratch files and a bounded ``subprocess.run``."""

    name = "peer"

    def __init__(
        self,
        home: Path,
        identity: Identity,
        anchors: Sequence[x509.Certificate],
        intermediates: Sequence[x509.Certificate] = (),
    ) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.identity = identity
        self.anchors = tuple(anchors)
        self.intermediates = tuple(intermediates)
        self._counter = itertools.count()
        self._env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
                     "HOME": str(self.home)}

    def _file(self, data: bytes | None = None, suffix: str = ".bin") -> Path:
        path = self.home / f"f{next(self._counter)}{suffix}"
        if data is not None:
            path.write_bytes(data)
        return path

    def _run(self, args: Sequence[str | os.PathLike[str]], *, stdin: bytes = b"",
             check: bool = True) -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(
                [os.fspath(a) for a in args], input=stdin, capture_output=True,
                timeout=TIMEOUT, env=self._env, check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise PeerError(f"{self.name}: timeout: {args[0]!s} {args[1]!s}") from error
        if check and result.returncode != 0:
            raise PeerError(
                f"{self.name}: {' '.join(map(str, args))} -> {result.returncode}\n"
                + result.stderr.decode("utf-8", "replace")
            )
        return result

    @staticmethod
    def _read(path: Path) -> bytes:
        if not path.exists():
            raise PeerError(f"no output written to {path.name}")
        return path.read_bytes()

    def close(self) -> None:
        pass


# --- OpenSSL ---------------------------------------------------------------------------------


class OpenSSLPeer(_Base):
    """``openssl cms`` (CMS) or ``openssl smime`` (PKCS#7 v1.5 structures).

    Gotchas:

    * ``-binary`` everywhere: without it ``sign`` turns bare LF into CRLF and ``verify`` checks
      a canonicalised copy of the detached content, ``decrypt`` and ``verify`` translate the
      output; with it the bytes go through as they are.
    * ``verify`` uses ``-purpose smimesign`` (the default of ``cms -verify``): the signer needs
      emailProtection in its EKU, or no EKU. Exit status 4 means the signature or chain failed.
    * Encryption variants only exist for ``cms``: ``key_transport="oaep"`` (``-keyopt
      rsa_padding_mode:oaep``), ``recipient_id="ski"`` (``-keyid``), ``cipher="aes-256-gcm"``
      (AuthEnvelopedData). ``smime`` offers CBC ciphers and PKCS#1 v1.5 only.
    * ``smime -encrypt`` takes recipients as positional arguments: given ``-recip`` it exits 0
      and writes nothing.
    """

    def __init__(
        self,
        home: Path,
        identity: Identity,
        anchors: Sequence[x509.Certificate],
        intermediates: Sequence[x509.Certificate] = (),
        *,
        command: str = "cms",
        cipher: str = "aes256",
        key_transport: str = "pkcs1v15",
        recipient_id: str = "issuer_serial",
        digest: str = "sha256",
    ) -> None:
        super().__init__(home, identity, anchors, intermediates)
        if command not in ("cms", "smime"):
            raise ValueError(command)
        if command == "smime" and (key_transport != "pkcs1v15" or recipient_id != "issuer_serial"
                                   or "gcm" in cipher):
            raise ValueError("openssl smime: CBC ciphers, PKCS#1 v1.5, issuer+serial only")
        self.command = command
        self.cipher = cipher
        self.key_transport = key_transport
        self.recipient_id = recipient_id
        self.digest = digest
        self.name = f"openssl-{command}"
        self._cert = self._file(identity.certificate.public_bytes(_PEM), ".pem")
        self._key = self._file(identity.private_key.private_bytes(
            _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), ".key")
        self._cafile = self._file(b"".join(c.public_bytes(_PEM) for c in self.anchors), ".pem")
        self._chain = (self._file(b"".join(c.public_bytes(_PEM) for c in self.intermediates),
                                  ".pem") if self.intermediates else None)

    def sign(self, content: bytes, detached: bool) -> bytes:
        out = self._file()
        args: list[str | Path] = [
            "openssl", self.command, "-sign", "-binary", "-md", self.digest,
            "-signer", self._cert, "-inkey", self._key, "-in", self._file(content),
            "-outform", "DER", "-out", out,
        ]
        if not detached:
            args.append("-nodetach")
        if self._chain is not None:
            args += ["-certfile", self._chain]
        self._run(args)
        return self._read(out)

    def encrypt(self, content: bytes, recipient_certs: Sequence[x509.Certificate]) -> bytes:
        out = self._file()
        args: list[str | Path] = [
            "openssl", self.command, "-encrypt", "-binary", f"-{self.cipher}",
            "-in", self._file(content), "-outform", "DER", "-out", out,
        ]
        if self.recipient_id == "ski":
            args.append("-keyid")
        for cert in recipient_certs:
            pem = self._file(cert.public_bytes(_PEM), ".pem")
            if self.command == "smime":
                args.append(pem)  # smime: recipients are positional (its -recip is ignored)
                continue
            # cms: -keyopt applies to the -recip before it.
            args += ["-recip", pem]
            if self.key_transport == "oaep":
                args += ["-keyopt", "rsa_padding_mode:oaep"]
        self._run(args)
        return self._read(out)

    def decrypt(self, der: bytes) -> bytes:
        out = self._file()
        self._run(["openssl", self.command, "-decrypt", "-binary", "-inform", "DER",
                   "-in", self._file(der), "-recip", self._cert, "-inkey", self._key,
                   "-out", out])
        return self._read(out)

    def verify(self, der: bytes, content: bytes | None) -> bytes:
        out = self._file()
        args: list[str | Path] = [
            "openssl", self.command, "-verify", "-binary", "-inform", "DER",
            "-in", self._file(der), "-CAfile", self._cafile, "-purpose", "smimesign",
            "-out", out,
        ]
        if content is not None:
            args += ["-content", self._file(content)]
        result = self._run(args, check=False)
        if result.returncode != 0:
            raise SignatureNotGood(f"{self.name}: {result.stderr.decode('utf-8', 'replace')}")
        return self._read(out)


# --- NSS -------------------------------------------------------------------------------------


_NSS_STATUS = re.compile(rb"signer(\d+)\.status=(\w+);")


class NSSPeer(_Base):
    """NSS ``cmsutil`` over a fresh ``sql:`` database (``certutil -N --empty-password``).

    Set-up: anchors imported with trust ``C,C,C``; the user's key and chain as an unencrypted
    PKCS#12 by ``pk12util -W ""`` (its friendly name becomes the nickname used by ``-S -N``);
    recipient certificates by ``certutil -A -t ",,"`` under a fingerprint nickname, then named
    in ``-E -r nick1,nick2`` (``-r`` takes nicknames or e-mail addresses).

    Gotchas:

    * ``cmsutil -D`` exits 0 whatever the signature status (a wrong digest, an untrusted signer):
      the status is only reported with ``-h LEVELS``, as ``signer0.status=GoodSignature;``
      (or ``DigestMismatch``, ``SigningCertNotTrusted``...). ``-h`` writes that report into the
      output stream before the content, so ``verify`` decodes twice: once with ``-n -h 1`` for
      the status, once for the content.
    * ``-D`` of a detached signature with ``-c CONTENT`` writes the content out again.
    * ``-E`` picks the content cipher from the recipients' S/MIME capabilities; without any on
      file it uses AES-128-CBC (there is no option to choose). Output is BER (indefinite
      lengths), for both SignedData and EnvelopedData.
    * ``-D`` does not descend into a SignedData carried as ``id-data`` inside an EnvelopedData
      (the S/MIME way to nest): decrypt, then verify the inner DER.
    """

    name = "nss"

    def __init__(
        self,
        home: Path,
        identity: Identity,
        anchors: Sequence[x509.Certificate],
        intermediates: Sequence[x509.Certificate] = (),
    ) -> None:
        super().__init__(home, identity, anchors, intermediates)
        self.db = self.home / "nssdb"
        self.db.mkdir(exist_ok=True)
        self._dbarg = f"sql:{self.db}"
        self._nicks: dict[str, str] = {}
        self._run(["certutil", "-N", "-d", self._dbarg, "--empty-password"])
        for i, anchor in enumerate(self.anchors):
            self._run(["certutil", "-A", "-d", self._dbarg, "-t", "C,C,C", "-n", f"anchor{i}",
                       "-i", self._file(anchor.public_bytes(_PEM), ".pem")])
            self._nicks[fingerprint(anchor)] = f"anchor{i}"
        self.nickname = "me"
        p12 = pkcs12.serialize_key_and_certificates(
            self.nickname.encode(), identity.private_key, identity.certificate,
            list(self.intermediates) or None, serialization.NoEncryption(),
        )
        self._run(["pk12util", "-i", self._file(p12, ".p12"), "-d", self._dbarg, "-W", ""])
        self._nicks[fingerprint(identity.certificate)] = self.nickname

    def _nick_for(self, cert: x509.Certificate) -> str:
        fpr = fingerprint(cert)
        if fpr not in self._nicks:
            nick = f"r{fpr[:16]}"
            self._run(["certutil", "-A", "-d", self._dbarg, "-t", ",,", "-n", nick,
                       "-i", self._file(cert.public_bytes(_PEM), ".pem")])
            self._nicks[fpr] = nick
        return self._nicks[fpr]

    def sign(self, content: bytes, detached: bool) -> bytes:
        out = self._file()
        args: list[str | Path] = ["cmsutil", "-S", "-N", self.nickname, "-H", "SHA256", "-G",
                                  "-i", self._file(content), "-o", out, "-d", self._dbarg]
        if detached:
            args.append("-T")
        self._run(args)
        return self._read(out)

    def encrypt(self, content: bytes, recipient_certs: Sequence[x509.Certificate]) -> bytes:
        nicks = ",".join(self._nick_for(c) for c in recipient_certs)
        out = self._file()
        self._run(["cmsutil", "-E", "-r", nicks, "-i", self._file(content), "-o", out,
                   "-d", self._dbarg])
        return self._read(out)

    def decrypt(self, der: bytes) -> bytes:
        out = self._file()
        self._run(["cmsutil", "-D", "-i", self._file(der), "-o", out, "-d", self._dbarg])
        return self._read(out)

    def verify(self, der: bytes, content: bytes | None) -> bytes:
        infile = self._file(der)
        detached: list[str | Path] = [] if content is None else ["-c", self._file(content)]
        report = self._file()
        result = self._run(["cmsutil", "-D", "-n", "-h", "1", "-i", infile, *detached,
                            "-o", report, "-d", self._dbarg], check=False)
        text = report.read_bytes() if report.exists() else b""
        statuses = _NSS_STATUS.findall(text)
        if result.returncode != 0 or not statuses or any(
                s != b"GoodSignature" for _, s in statuses):
            raise SignatureNotGood(
                f"{self.name}: rc={result.returncode} {text!r} {result.stderr!r}")
        out = self._file()
        self._run(["cmsutil", "-D", "-i", infile, *detached, "-o", out, "-d", self._dbarg])
        return self._read(out)


# --- GnuPG gpgsm -----------------------------------------------------------------------------


class GpgsmPeer(_Base):
    """GnuPG ``gpgsm`` (2.2) with a fresh GNUPGHOME and its own gpg-agent.

    Set-up: GNUPGHOME is a short ``/tmp/gsXXXX`` folder (mode 0700; the agent's socket path
    must stay under ~108 bytes, a pytest tmp path can be longer), removed by ``close()`` after
    ``gpgconf --kill all``. ``gpg-agent.conf`` has ``allow-loopback-pinentry``; every call runs
    ``--batch --yes --pinentry-mode loopback --disable-dirmngr --disable-crl-checks`` (no
    network, no CRL fetch). Anchors are imported and listed in ``trustlist.txt`` as
    ``FINGERPRINT S`` (trusted for S/MIME).

    Gotchas:

    * ``--import`` of a PKCS#12 made by cryptography with PBES2 (AES-256, HMAC-SHA256) fails
      ("encryptedData error at pkcs5PBES2-params", gpgsm 2.2.40): the p12 is made with the
      legacy PBE SHA1/3DES and a password, given via ``--passphrase-fd 0``; the agent then
      protects the key with that same passphrase, needed again (loopback) to sign or decrypt.
    * There is no ``--always-trust`` in gpgsm 2.2: recipients must chain to a trustlist entry.
    * Default content cipher is AES-128-CBC: ``--cipher-algo AES256`` asks for AES-256-CBC.
    * ``--verify`` prints ``GOODSIG`` as soon as the signature value checks, even when the
      chain does not (``TRUST_UNDEFINED``, exit 2): good means exit 0 with GOODSIG, VALIDSIG
      and TRUST_FULLY/TRUST_ULTIMATE, and no BADSIG/ERRSIG.
    * ``--decrypt`` of an EnvelopedData whose first RecipientInfo is not ours logs "No secret
      key" (``NO_SECKEY``) for it, goes on, decrypts with ours (``DECRYPTION_OKAY``), writes
      the content and still exits 2: success is read from the status lines, not the exit code.
      (OpenSSL sorts the RecipientInfos as a DER SET OF, so the order seen depends on the
      certificates, not on the command line.)
    * Output is binary DER/BER by default (no ``--armor``); the signer's certificates are
      embedded (``--include-certs -2``: all but the root).
    """

    name = "gpgsm"
    _PASSPHRASE = b"interop-test"  # a test-only throw-away key's p12 password

    def __init__(
        self,
        home: Path,
        identity: Identity,
        anchors: Sequence[x509.Certificate],
        intermediates: Sequence[x509.Certificate] = (),
    ) -> None:
        super().__init__(home, identity, anchors, intermediates)
        self.gnupghome = Path(tempfile.mkdtemp(prefix="gs", dir="/tmp"))
        self.gnupghome.chmod(0o700)
        (self.gnupghome / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
        self._env["GNUPGHOME"] = str(self.gnupghome)
        self._imported: set[str] = set()
        for cert in (*self.anchors, *self.intermediates):
            self._import(cert)
        (self.gnupghome / "trustlist.txt").write_text(
            "".join(f"{_colons(fingerprint(a))} S\n" for a in self.anchors))
        p12 = pkcs12.serialize_key_and_certificates(
            b"me", identity.private_key, identity.certificate, list(self.intermediates) or None,
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .hmac_hash(hashes.SHA1())  # noqa: S303 - what gpgsm 2.2 reads; a test-only key
            .build(self._PASSPHRASE),
        )
        self._gpgsm("--passphrase-fd", "0", "--import", self._file(p12, ".p12"),
                    stdin=self._PASSPHRASE)
        self._imported.add(fingerprint(identity.certificate))
        self.user = "0x" + fingerprint(identity.certificate)

    def _gpgsm(self, *args: str | Path, stdin: bytes = b"",
               check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return self._run(["gpgsm", "--homedir", self.gnupghome, "--batch", "--yes",
                          "--pinentry-mode", "loopback", "--disable-dirmngr",
                          "--disable-crl-checks", *args], stdin=stdin, check=check)

    def _import(self, cert: x509.Certificate) -> None:
        fpr = fingerprint(cert)
        if fpr not in self._imported:
            self._gpgsm("--import", self._file(cert.public_bytes(_DER), ".der"))
            self._imported.add(fpr)

    def sign(self, content: bytes, detached: bool) -> bytes:
        out = self._file()
        mode = ["--detach-sign"] if detached else ["--sign"]
        self._gpgsm("--passphrase-fd", "0", "--digest-algo", "SHA256", "--local-user",
                    self.user, *mode, "--output", out, self._file(content),
                    stdin=self._PASSPHRASE)
        return self._read(out)

    def encrypt(self, content: bytes, recipient_certs: Sequence[x509.Certificate]) -> bytes:
        recipients: list[str] = []
        for cert in recipient_certs:
            self._import(cert)
            recipients += ["--recipient", "0x" + fingerprint(cert)]
        out = self._file()
        self._gpgsm("--cipher-algo", "AES256", *recipients, "--encrypt", "--output", out,
                    self._file(content))
        return self._read(out)

    def decrypt(self, der: bytes) -> bytes:
        out = self._file()
        result = self._gpgsm("--passphrase-fd", "0", "--status-fd", "1", "--decrypt",
                             "--output", out, self._file(der), stdin=self._PASSPHRASE,
                             check=False)
        status = _status_keywords(result.stdout)
        # Exit 2 also follows a success when another recipient came first (see class doc).
        if b"DECRYPTION_OKAY" not in status or b"DECRYPTION_FAILED" in status:
            raise PeerError(f"{self.name}: decrypt rc={result.returncode} {result.stdout!r} "
                            f"{result.stderr.decode('utf-8', 'replace')}")
        return self._read(out)

    def verify(self, der: bytes, content: bytes | None) -> bytes:
        out = self._file()
        files: list[str | Path] = [self._file(der)]
        if content is None:
            files = ["--output", out, *files]
        else:
            files.append(self._file(content))
        result = self._gpgsm("--status-fd", "1", "--verify", *files, check=False)
        status = _status_keywords(result.stdout)
        good = (result.returncode == 0 and {b"GOODSIG", b"VALIDSIG"} <= status
                and bool(status & {b"TRUST_FULLY", b"TRUST_ULTIMATE"})
                and not status & {b"BADSIG", b"ERRSIG", b"TRUST_UNDEFINED", b"TRUST_NEVER"})
        if not good:
            raise SignatureNotGood(f"{self.name}: rc={result.returncode} {result.stdout!r}")
        return content if content is not None else self._read(out)

    def close(self) -> None:
        with contextlib.suppress(PeerError):
            self._run(["gpgconf", "--homedir", self.gnupghome, "--kill", "all"], check=False)
        shutil.rmtree(self.gnupghome, ignore_errors=True)


def _status_keywords(status_output: bytes) -> set[bytes]:
    """The keywords of ``[GNUPG:] KEYWORD args`` lines (``--status-fd 1``)."""
    return {line.split()[1] for line in status_output.splitlines()
            if line.startswith(b"[GNUPG:] ") and len(line.split()) > 1}


def _colons(hex_fpr: str) -> str:
    return ":".join(hex_fpr[i:i + 2] for i in range(0, len(hex_fpr), 2))


# --- factory ---------------------------------------------------------------------------------

PEER_KINDS = ("openssl-cms", "openssl-smime", "nss", "gpgsm")


def make_peer(
    kind: str,
    home: Path,
    identity: Identity,
    anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
) -> OpenSSLPeer | NSSPeer | GpgsmPeer:
    if kind == "openssl-cms":
        return OpenSSLPeer(home, identity, anchors, intermediates, command="cms")
    if kind == "openssl-smime":
        return OpenSSLPeer(home, identity, anchors, intermediates, command="smime")
    if kind == "nss":
        return NSSPeer(home, identity, anchors, intermediates)
    if kind == "gpgsm":
        return GpgsmPeer(home, identity, anchors, intermediates)
    raise ValueError(kind)


def tool_for(kind: str) -> str:
    return "openssl" if kind.startswith("openssl") else kind
