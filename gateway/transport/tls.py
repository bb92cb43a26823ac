"""TLS contexts for the SMTP listener and for delivery to the next hop.

Rule kept here: TLS 1.2 or newer, and delivery always verifies the next hop's chain against the
CA certificates it is given -- never the system store (a health network has its own CAs), never
``CERT_NONE``. Only the host name check may be turned off (a relay addressed by an IP without an
IP SAN); the chain check cannot. On the listener, a client certificate is *optional* at the TLS
layer (``CERT_OPTIONAL``: a peer without one still completes the handshake and gets a clear SMTP
``554`` rather than a handshake failure); whether it is required is decided by the SMTP layer
through ``peer_certificate_trusted`` (RFC 3207 §4.1).
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.x509 import verification

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# Forward-secret AEAD suites only for TLS 1.2 (TLS 1.3 suites are all fine).
_CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!MD5:!DSS"

PathLike = str | Path


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(_CIPHERS_TLS12)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(cert_file: PathLike | None, key_file: PathLike | None, *,
                   client_ca: PathLike | Sequence[PathLike] | None = None,
                   client_cadata: str | bytes | None = None) -> ssl.SSLContext:
    """The listener's context: our certificate and key; client CAs make client certs optional.

    ``client_ca`` (PEM files) or ``client_cadata`` (PEM text / DER bytes): the CAs whose client
    certificates the handshake accepts (and advertises). Without them no client certificate is
    asked for.
    """
    if cert_file is None or key_file is None:
        raise ValueError("a TLS listener needs a certificate and a key")
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(str(cert_file), str(key_file))
    cas: Sequence[PathLike] = ([client_ca] if isinstance(client_ca, str | Path)
                               else list(client_ca or ()))
    for ca in cas:
        context.load_verify_locations(cafile=str(ca))
    if client_cadata is not None:
        context.load_verify_locations(cadata=client_cadata)
    if cas or client_cadata is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(*, ca_files: Sequence[PathLike] = (), cadata: str | bytes | None = None,
                   client_cert: PathLike | None = None, client_key: PathLike | None = None,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """The delivery context: verifies the next hop against ``ca_files`` / ``cadata`` only.

    ``client_cert`` / ``client_key``: our certificate for mutual TLS (MSSanté operators).
    ``check_hostname=False`` keeps the chain verification and drops only the name match.
    """
    if not ca_files and cadata is None:
        raise ValueError("delivery needs the CA certificates of the next hop: no unverified TLS")
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # no system CAs loaded
    for ca in ca_files:
        context.load_verify_locations(cafile=str(ca))
    if cadata is not None:
        context.load_verify_locations(cadata=cadata)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED  # after check_hostname: never relaxed
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together")
    if client_cert is not None and client_key is not None:
        context.load_cert_chain(str(client_cert), str(client_key))
    return context


class CertificateStore(Protocol):
    """What ``peer_certificate_trusted`` needs (``gateway.smime.trust.TrustStore`` has it)."""

    @property
    def anchors(self) -> Sequence[x509.Certificate]: ...

    @property
    def intermediates(self) -> Sequence[x509.Certificate]: ...


def peer_certificate_trusted(der: bytes, store: CertificateStore, *,
                             at: dt.datetime | None = None) -> bool:
    """Is the TLS client certificate ``der`` valid for client authentication under ``store``?

    Chain to the anchors (with the store's intermediates), validity at ``at`` (default now),
    clientAuth EKU; a SAN is not required (client certificates often carry none). If the store
    has ``crls``, a certificate listed by its issuer's CRL is refused. Never raises.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
        when = at or dt.datetime.now(dt.UTC)
        ee_policy = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None)
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(list(store.anchors)))
            .time(when)
            .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                                ee_policy=ee_policy)
            .build_client_verifier()
        )
        verified = verifier.verify(cert, list(store.intermediates))
        crls: Sequence[x509.CertificateRevocationList] = getattr(store, "crls", ())
        for member in verified.chain[:-1]:  # every certificate but the anchor
            for crl in crls:
                if (crl.issuer == member.issuer
                        and crl.get_revoked_certificate_by_serial_number(
                            member.serial_number) is not None):
                    return False
    except Exception:  # any parse or verification failure: not trusted (fail closed)
        return False
    return True
