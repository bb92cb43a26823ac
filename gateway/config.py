"""Configuration: one TOML file turned into frozen, typed dataclasses (DESIGN §5).

Rule kept here: a configuration is checked whole before anything runs, and every problem names
the file and the dotted key it comes from (``networks.mssante.smime_key``). ``load_config``
collects *all* the problems (syntax, missing and unknown keys, wrong types, files that are
missing or do not parse, keys that do not match their certificate, overlapping domains, bad
``host:port``...) and raises them together in one ``ConfigError``. Messages never contain key
material or secrets: at most a path, a key name and what is wrong.

Layout of the file::

    [gateway]                     hostname (required) and the bounds / logging settings
    [networks.apicrypt]           one table per network, both required, no other name
    [networks.apicrypt.imap]      optional: poll a mailbox instead of (or besides) listening
    [networks.apicrypt.rewrite]   optional: ``domain = "..."``, the rule used by the routing for
                                  addresses missing from the address book (its meaning belongs
                                  to ``gateway.translate.routing``; only its syntax is checked)
    [[address_book]]              ``apicrypt = "..."`` / ``mssante = "..."`` static pairs

Relative paths are relative to the directory of the configuration file; they are stored as
absolute ``pathlib.Path``. Addresses are stored normalised: lower-cased, IDN domains as
A-labels (``normalise_address``). Domain patterns are ``example.org`` (that domain exactly) or
``*.example.org`` (any subdomain of it, not ``example.org`` itself).

This module also reads the certificate, CRL and key files for the runtime (``load_identity``,
``read_certificates``, ``read_crls``): the rest of the gateway receives loaded objects.
"""

from __future__ import annotations

import codecs
import datetime as dt
import encodings.idna
import ipaddress
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import ConfigError, ConfigProblem

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

NETWORK_NAMES: tuple[str, ...] = ("apicrypt", "mssante")
DEFAULT_CHARSETS: Mapping[str, str] = MappingProxyType(
    {"apicrypt": "iso-8859-1", "mssante": "utf-8"})
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EXPIRY_WARNING = dt.timedelta(days=30)

T = TypeVar("T")


# --- the values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewaySettings:
    """``[gateway]``: the process-wide settings."""

    hostname: str
    max_message_bytes: int = 26_214_400
    max_recipients: int = 50
    pseudonym_key_file: Path | None = None  # keyed hash key for pseudonymised log addresses
    log_format: Literal["json", "console"] = "json"
    log_level: str = "info"
    drain_seconds: float = 30.0
    summary_seconds: float = 60.0  # period of the "summary" log line
    metrics_listen: str | None = None  # "host:port" of /metrics, /healthz, /readyz (optional)
    mlockall: bool = False  # lock the process in RAM: decrypted content never reaches swap
    data_timeout_seconds: float = 120.0
    command_timeout_seconds: float = 60.0
    max_sessions: int = 100
    max_sessions_per_ip: int = 20
    rate_limit_per_minute: int = 120  # per envelope sender
    max_depth: int = 6  # MIME / S/MIME nesting
    # Messages up to this size are translated on the event loop (see Gateway._relay); bigger
    # ones in the thread pool. 0: every translation in the pool.
    translate_inline_bytes: int = 65_536


@dataclass(frozen=True)
class ImapConfig:
    """``[networks.<name>.imap]``: a mailbox polled for mail *from* this network."""

    host: str
    user: str
    password_file: Path
    port: int = 993
    mailbox: str = "INBOX"
    processing_folder: str = "Passerelle/Processing"
    rejected_folder: str = "Passerelle/Rejected"
    lease_seconds: float = 600.0
    poll_seconds: float = 30.0
    tls_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass(frozen=True)
class RewriteRule:
    """``[networks.<name>.rewrite]``: the domain of the rule for unlisted addresses."""

    domain: str


@dataclass(frozen=True)
class NetworkConfig:
    """``[networks.<name>]``: everything the gateway knows about one network."""

    name: str
    domains: tuple[str, ...]
    trust_anchors: tuple[Path, ...]
    crls: tuple[Path, ...]
    smime_cert: Path
    smime_key: Path
    directory: Path
    relay: str  # "host:port" of the next hop for mail *to* this network
    intermediates: tuple[Path, ...] = ()
    listen: str | None = None  # "host:port" of the SMTP listener for mail *from* this network
    tls_cert: Path | None = None  # required when ``listen`` is set
    tls_key: Path | None = None
    client_ca: Path | None = None
    require_client_cert: bool = False
    proxy_protocol: bool = False  # the listener expects a PROXY header (behind a balancer)
    # False: MAIL without STARTTLS is accepted (Postfix's before-queue proxy speaks plain SMTP
    # to its filter); only on a loopback ``listen`` address, never with require_client_cert.
    require_starttls: bool = True
    relay_tls_cert: Path | None = None
    relay_tls_key: Path | None = None
    relay_tls_verify: bool = True
    relay_ca: Path | None = None  # default: this network's trust anchors
    charset: str = "utf-8"  # the text charset written toward this network
    utf8_recipients: tuple[str, ...] = ()
    imap: ImapConfig | None = None
    rewrite: RewriteRule | None = None

    def owns(self, address: str) -> bool:
        """True if ``address`` has a domain of this network (by the ``domains`` patterns)."""
        normalised, _ = check_address(address)
        if normalised is None:
            return False
        domain = normalised.rpartition("@")[2]
        return any(domain_matches(pattern, domain) for pattern in self.domains)

    @property
    def listen_address(self) -> tuple[str, int] | None:
        return split_host_port(self.listen) if self.listen else None

    @property
    def relay_address(self) -> tuple[str, int]:
        return split_host_port(self.relay)


@dataclass(frozen=True)
class AddressPair:
    """One ``[[address_book]]`` entry: the same person's address on each network."""

    apicrypt: str
    mssante: str

    def on(self, network: str) -> str:
        return self.apicrypt if network == "apicrypt" else self.mssante


@dataclass(frozen=True)
class Config:
    """A whole, checked configuration."""

    path: Path  # the configuration file, absolute
    gateway: GatewaySettings
    networks: Mapping[str, NetworkConfig]
    address_book: tuple[AddressPair, ...] = ()
    warnings: tuple[str, ...] = field(default=())  # worth a log line, not worth refusing

    def network(self, name: str) -> NetworkConfig:
        return self.networks[name]

    @staticmethod
    def other(name: str) -> str:
        if name not in NETWORK_NAMES:
            raise KeyError(name)
        return "mssante" if name == "apicrypt" else "apicrypt"


# --- syntax of domains, addresses and host:port ---------------------------------------------

_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_LOCAL_FORBIDDEN = frozenset(' \t\r\n@<>()[],;:"\\')


def _to_a_label(label: str) -> str | None:
    """One label as a lower-case A-label, or None if it cannot be one."""
    if not label:
        return None
    if label.isascii():
        ascii_label = label.lower()
        if ascii_label.startswith("xn--"):
            try:  # an A-label given as such must decode
                ascii_label[4:].encode("ascii").decode("punycode")
            except (UnicodeError, ValueError):
                return None
    else:
        try:
            ascii_label = encodings.idna.ToASCII(label).decode("ascii").lower()
        except (UnicodeError, ValueError):
            return None
    if not 0 < len(ascii_label) <= 63 or not set(ascii_label) <= _LDH:
        return None
    if ascii_label.startswith("-") or ascii_label.endswith("-"):
        return None
    return ascii_label


def check_domain_pattern(value: object, *, wildcard: bool = True) -> tuple[str | None, str | None]:
    """``(normalised, None)`` or ``(None, reason)``; never raises.

    Accepts ``example.org`` or, if ``wildcard``, ``*.example.org``. The result is lower-case
    ASCII, IDN labels converted to A-labels with the ``idna`` codec.
    """
    if not isinstance(value, str):
        return None, "bad address pattern: not a string"
    if not value or any(c.isspace() for c in value):
        return None, "bad address pattern: empty or contains spaces"
    if "@" in value:
        return None, "bad address pattern: contains '@' (a domain is expected)"
    labels = value.split(".")
    star = labels[0] == "*"
    if star:
        if not wildcard:
            return None, "bad address pattern: '*' not allowed here"
        labels = labels[1:]
    if any("*" in label for label in labels):
        return None, "bad address pattern: '*' is allowed only as the whole leftmost label"
    if not labels:
        return None, "bad address pattern: no domain after '*.'"
    converted = []
    for label in labels:
        a_label = _to_a_label(label)
        if a_label is None:
            return None, "bad address pattern: invalid domain label"
        converted.append(a_label)
    if converted[-1].isdigit():
        return None, "bad address pattern: numeric top-level label"
    domain = ".".join(converted)
    if len(domain) > 253:
        return None, "bad address pattern: domain too long"
    return ("*." + domain if star else domain), None


def check_address(value: object) -> tuple[str | None, str | None]:
    """``(normalised, None)`` or ``(None, reason)`` for an e-mail address; never raises.

    Normalised: local part lower-cased (the networks treat addresses case-insensitively),
    domain lower-case with IDN labels as A-labels.
    """
    if not isinstance(value, str):
        return None, "bad address: not a string"
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        return None, "bad address: expected local@domain"
    if len(local) > 64 or any(c in _LOCAL_FORBIDDEN or not c.isprintable() for c in local):
        return None, "bad address: invalid local part"
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return None, "bad address: invalid local part"
    normalised_domain, _ = check_domain_pattern(domain, wildcard=False)
    if normalised_domain is None:
        return None, "bad address: invalid domain"
    return f"{local.lower()}@{normalised_domain}", None


def normalise_address(address: str) -> str:
    """The normalised form of a valid address (ValueError if it is not one)."""
    normalised, reason = check_address(address)
    if normalised is None:
        raise ValueError(reason)
    return normalised


def domain_matches(pattern: str, domain: str) -> bool:
    """Does the normalised ``domain`` fall under the normalised ``pattern``?"""
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return domain == pattern


def patterns_overlap(a: str, b: str) -> bool:
    """Could one domain match both normalised patterns?"""
    wild_a, wild_b = a.startswith("*."), b.startswith("*.")
    base_a, base_b = a.removeprefix("*."), b.removeprefix("*.")
    if wild_a and wild_b:
        return base_a == base_b or base_a.endswith("." + base_b) or base_b.endswith("." + base_a)
    if wild_a:
        return domain_matches(a, b)
    if wild_b:
        return domain_matches(b, a)
    return a == b


def split_host_port(value: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); ValueError if malformed."""
    host, colon, port_text = value.rpartition(":")
    if not colon or not host or not port_text.isascii() or not port_text.isdigit():
        raise ValueError("expected host:port")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError("expected host:port")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 host must be written [address]:port")
    if any(c.isspace() for c in host):
        raise ValueError("expected host:port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError("port must be 1..65535")
    return host, port


# --- reading certificates, CRLs and keys ------------------------------------------------------


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one DER certificate; ValueError otherwise."""
    if b"-----BEGIN" in data:
        certs = x509.load_pem_x509_certificates(data)
    else:
        certs = [x509.load_der_x509_certificate(data)]
    if not certs:
        raise ValueError("no certificate")
    return certs


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def parse_private_key(data: bytes) -> PrivateKey:
    """An unencrypted PEM (or DER) RSA or EC private key; TypeError/ValueError otherwise."""
    if b"-----BEGIN" in data:
        key = serialization.load_pem_private_key(data, password=None)
    else:
        key = serialization.load_der_private_key(data, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("unsupported key type")
    return key


def _problem(path: Path, what: str, reason: str) -> ConfigError:
    return ConfigError([ConfigProblem(str(path), what, reason)])


def read_certificates(path: Path) -> list[x509.Certificate]:
    """The certificates of a file (PEM, one or more; or DER). ConfigError if unusable."""
    try:
        return parse_certificates(path.read_bytes())
    except OSError as exc:
        raise _problem(path, "certificate", f"cannot read: {exc.strerror}") from None
    except ValueError:
        raise _problem(path, "certificate", "not a PEM or DER certificate") from None


def read_crls(paths: Iterable[Path]) -> list[x509.CertificateRevocationList]:
    """One CRL per file (PEM or DER). ConfigError naming the file if one is unusable."""
    crls = []
    for path in paths:
        try:
            crls.append(parse_crl(path.read_bytes()))
        except OSError as exc:
            raise _problem(path, "crl", f"cannot read: {exc.strerror}") from None
        except ValueError:
            raise _problem(path, "crl", "not a PEM or DER CRL") from None
    return crls


def read_private_key(path: Path) -> PrivateKey:
    try:
        return parse_private_key(path.read_bytes())
    except OSError as exc:
        raise _problem(path, "private key", f"cannot read: {exc.strerror}") from None
    except (TypeError, ValueError):
        # The library's message is not repeated: keep anything about the key out of logs.
        raise _problem(path, "private key", "not an unencrypted RSA or EC private key") from None


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key as read from the files (the runtime makes it an
    ``Identity``; config stays below the S/MIME layer and does not import it)."""

    certificate: x509.Certificate
    private_key: PrivateKey


def load_identity(net: NetworkConfig) -> KeyPair:
    """The gateway's S/MIME certificate and private key on ``net``."""
    certificate = read_certificates(net.smime_cert)[0]
    key = read_private_key(net.smime_key)
    if not _same_public_key(certificate, key):
        raise _problem(net.smime_key, "private key", "does not match the certificate")
    return KeyPair(certificate=certificate, private_key=key)


def _same_public_key(certificate: x509.Certificate, key: PrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        return certificate.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)
    except ValueError:  # an unsupported public key type in the certificate
        return False


# --- the checker ------------------------------------------------------------------------------

_Kind = Literal["file", "dir"]


class _Checker:
    """Collects problems and warnings while the file is read; never stops at the first."""

    def __init__(self, file: Path, now: dt.datetime) -> None:
        self.file = file
        self.base = file.parent
        self.now = now
        self.problems: list[ConfigProblem] = []
        self.warnings: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(str(self.file), key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.file}: {key}: {message}")

    # --- structure -------------------------------------------------------------------------

    def table(self, parent: Mapping[str, Any], name: str, key: str, *,
              required: bool) -> dict[str, Any] | None:
        value = parent.get(name)
        if value is None:
            if required:
                self.problem(key, "missing required table")
            return None
        if not isinstance(value, dict):
            self.problem(key, "must be a table")
            return None
        return value

    def unknown_keys(self, table: Mapping[str, Any], allowed: Iterable[str], prefix: str) -> None:
        known = set(allowed)
        for name in table:
            if name not in known:
                self.problem(_join(prefix, name), "unknown key")

    def _get(self, table: Mapping[str, Any], name: str, key: str,
             what: str, default: T, *, required: bool,
             accept: Callable[[Any], bool]) -> Any:
        if name not in table:
            if required:
                self.problem(key, "missing required key")
            return default
        value = table[name]
        if not accept(value):
            self.problem(key, f"must be {what}")
            return default
        return value

    def string(self, table: Mapping[str, Any], name: str, prefix: str, default: str = "", *,
               required: bool = False) -> str:
        value: str = self._get(table, name, _join(prefix, name), "a string", default,
                               required=required, accept=lambda v: isinstance(v, str))
        return value

    def integer(self, table: Mapping[str, Any], name: str, prefix: str, default: int, *,
                minimum: int = 1, maximum: int | None = None) -> int:
        key = _join(prefix, name)
        value: int = self._get(
            table, name, key, "an integer", default, required=False,
            accept=lambda v: isinstance(v, int) and not isinstance(v, bool))
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
            self.problem(key, f"must be {bounds}")
            return default
        return value

    def seconds(self, table: Mapping[str, Any], name: str, prefix: str, default: float) -> float:
        key = _join(prefix, name)
        value = self._get(
            table, name, key, "a number of seconds", default, required=False,
            accept=lambda v: isinstance(v, int | float) and not isinstance(v, bool))
        if not 0 < value < float("inf"):
            self.problem(key, "must be a positive number of seconds")
            return default
        return float(value)

    def boolean(self, table: Mapping[str, Any], name: str, prefix: str, default: bool) -> bool:
        value: bool = self._get(table, name, _join(prefix, name), "true or false",
                                default, required=False, accept=lambda v: isinstance(v, bool))
        return value

    def string_list(self, table: Mapping[str, Any], name: str, prefix: str, *,
                    required: bool = False, single: bool = False) -> list[tuple[str, str]]:
        """(key, value) pairs of a list of strings (or a single string if ``single``)."""
        key = _join(prefix, name)
        if name not in table:
            if required:
                self.problem(key, "missing required key")
            return []
        value = table[name]
        if single and isinstance(value, str):
            return [(key, value)]
        what = "a string or a list of strings" if single else "a list of strings"
        if not isinstance(value, list):
            self.problem(key, f"must be {what}")
            return []
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append((f"{key}[{i}]", item))
            else:
                self.problem(f"{key}[{i}]", "must be a string")
        return out

    # --- files -----------------------------------------------------------------------------

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = self.base / path
        return Path(os.path.normpath(path))

    def check_path(self, key: str, path: Path, kind: _Kind) -> bool:
        try:
            path.stat()
        except FileNotFoundError:
            self.problem(key, f"{'folder' if kind == 'dir' else 'file'} not found: {path}")
            return False
        except OSError as exc:
            self.problem(key, f"cannot access {path}: {exc.strerror}")
            return False
        if kind == "dir":
            if not path.is_dir():
                self.problem(key, f"not a folder: {path}")
                return False
            if not os.access(path, os.R_OK | os.X_OK):
                self.problem(key, f"folder not readable: {path}")
                return False
            return True
        if not path.is_file():
            self.problem(key, f"not a regular file: {path}")
            return False
        return True

    def path(self, table: Mapping[str, Any], name: str, prefix: str, *, kind: _Kind = "file",
             required: bool = False) -> Path | None:
        key = _join(prefix, name)
        if name not in table:
            if required:
                self.problem(key, "missing required key")
            return None
        value = table[name]
        if not isinstance(value, str) or not value:
            self.problem(key, "must be a path (a non-empty string)")
            return None
        path = self.resolve(value)
        self.check_path(key, path, kind)
        return path

    def read(self, key: str, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except OSError as exc:
            self.problem(key, f"cannot read {path}: {exc.strerror}")
            return None

    def certificates(self, key: str, path: Path | None) -> list[x509.Certificate] | None:
        if path is None or not path.is_file():
            return None  # already reported
        data = self.read(key, path)
        if data is None:
            return None
        try:
            return parse_certificates(data)
        except ValueError:
            self.problem(key, f"not a PEM or DER certificate: {path}")
            return None

    def private_key(self, key: str, path: Path | None) -> PrivateKey | None:
        if path is None or not path.is_file():
            return None
        data = self.read(key, path)
        if data is None:
            return None
        try:
            private = parse_private_key(data)
        except TypeError:
            self.problem(key, f"private key is encrypted (unencrypted PEM expected): {path}")
            return None
        except ValueError:
            self.problem(key, f"not an RSA or EC private key in PEM: {path}")
            return None
        self.secret_mode(key, path)
        return private

    def secret_mode(self, key: str, path: Path) -> None:
        """Warn when a file holding a secret can be read by others than its owner."""
        try:
            if path.stat().st_mode & 0o077:
                self.warn(key, f"{path} is readable by group or others (chmod 600)")
        except OSError:
            pass  # an unreadable file is reported where it is read

    def crl(self, key: str, path: Path) -> None:
        if not path.is_file():
            return
        data = self.read(key, path)
        if data is None:
            return
        try:
            crl = parse_crl(data)
        except ValueError:
            self.problem(key, f"not a PEM or DER CRL: {path}")
            return
        next_update = crl.next_update_utc
        if next_update is not None and next_update < self.now:
            self.warn(key, f"CRL {path} is past its next update ({next_update:%Y-%m-%d})")

    def validity(self, key: str, cert: x509.Certificate, what: str) -> None:
        if cert.not_valid_after_utc < self.now:
            self.problem(key, f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        elif cert.not_valid_before_utc > self.now:
            self.problem(key, f"{what} not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
        elif cert.not_valid_after_utc - self.now < EXPIRY_WARNING:
            self.warn(key, f"{what} expires on {cert.not_valid_after_utc:%Y-%m-%d}")

    def key_pair(self, prefix: str, cert_name: str, key_name: str, *, cert_path: Path | None,
                 key_path: Path | None, what: str) -> None:
        """Parse a certificate and its key, check they match and the certificate's dates."""
        certs = self.certificates(_join(prefix, cert_name), cert_path)
        private = self.private_key(_join(prefix, key_name), key_path)
        if certs:
            self.validity(_join(prefix, cert_name), certs[0], what)
        if certs and private is not None and not _same_public_key(certs[0], private):
            self.problem(_join(prefix, key_name), f"does not match {prefix}.{cert_name}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --- the sections -----------------------------------------------------------------------------

_GATEWAY_KEYS = ("hostname", "max_message_bytes", "max_recipients", "pseudonym_key_file",
                 "log_format", "log_level", "drain_seconds", "summary_seconds",
                 "data_timeout_seconds", "command_timeout_seconds", "max_sessions",
                 "max_sessions_per_ip",
                 "rate_limit_per_minute", "max_depth", "metrics_listen",
                 "mlockall", "translate_inline_bytes")
_NETWORK_KEYS = ("domains", "trust_anchors", "intermediates", "crls", "smime_cert", "smime_key",
                 "directory", "listen", "tls_cert", "tls_key", "relay", "client_ca",
                 "require_client_cert", "proxy_protocol", "require_starttls",
                 "relay_tls_cert", "relay_tls_key",
                 "relay_tls_verify",
                 "relay_ca", "charset", "utf8_recipients", "imap", "rewrite")
_IMAP_KEYS = ("host", "port", "user", "password_file", "mailbox", "processing_folder",
              "rejected_folder", "lease_seconds", "poll_seconds", "tls_ca", "client_cert",
              "client_key")


def _gateway(c: _Checker, data: Mapping[str, Any]) -> GatewaySettings:
    p = "gateway"
    table = c.table(data, "gateway", p, required=True)
    if table is None:
        return GatewaySettings(hostname="")  # reported; the config will not be used
    c.unknown_keys(table, _GATEWAY_KEYS, p)
    hostname = c.string(table, "hostname", p, required=True)
    if hostname:
        normalised, _ = check_domain_pattern(hostname, wildcard=False)
        if normalised is None:
            c.problem(f"{p}.hostname", "not a valid host name")
        else:
            hostname = normalised
    key_file = c.path(table, "pseudonym_key_file", p)
    if key_file is not None and key_file.is_file():
        content = c.read(f"{p}.pseudonym_key_file", key_file)
        if content is not None and len(content.strip()) < 16:
            c.problem(f"{p}.pseudonym_key_file", "key too short (at least 16 bytes)")
        c.secret_mode(f"{p}.pseudonym_key_file", key_file)
    log_format = c.string(table, "log_format", p, "json")
    if log_format not in LOG_FORMATS:
        c.problem(f"{p}.log_format", "must be \"json\" or \"console\"")
        log_format = "json"
    log_level = c.string(table, "log_level", p, "info").lower()
    if log_level not in LOG_LEVELS:
        c.problem(f"{p}.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        log_level = "info"
    return GatewaySettings(
        hostname=hostname,
        max_message_bytes=c.integer(table, "max_message_bytes", p, 26_214_400, minimum=1024),
        max_recipients=c.integer(table, "max_recipients", p, 50),
        pseudonym_key_file=key_file,
        log_format="console" if log_format == "console" else "json",
        log_level=log_level,
        drain_seconds=c.seconds(table, "drain_seconds", p, 30.0),
        summary_seconds=c.seconds(table, "summary_seconds", p, 60.0),
        data_timeout_seconds=c.seconds(table, "data_timeout_seconds", p, 120.0),
        command_timeout_seconds=c.seconds(table, "command_timeout_seconds", p, 60.0),
        max_sessions=c.integer(table, "max_sessions", p, 100),
        max_sessions_per_ip=c.integer(table, "max_sessions_per_ip", p, 20),
        rate_limit_per_minute=c.integer(table, "rate_limit_per_minute", p, 120),
        max_depth=c.integer(table, "max_depth", p, 6, maximum=100),
        metrics_listen=_host_port(c, table, "metrics_listen", p, required=False),
        mlockall=c.boolean(table, "mlockall", p, False),
        translate_inline_bytes=c.integer(table, "translate_inline_bytes", p, 65_536,
                                         minimum=0, maximum=1_048_576),
    )


def _host_port(c: _Checker, table: Mapping[str, Any], name: str, prefix: str, *,
               required: bool) -> str | None:
    key = _join(prefix, name)
    if name not in table:
        if required:
            c.problem(key, "missing required key")
        return None
    value = c.string(table, name, prefix)
    if not value:
        if isinstance(table[name], str):
            c.problem(key, "must be host:port")
        return None
    try:
        split_host_port(value)
    except ValueError as exc:
        c.problem(key, f"must be host:port with a port 1..65535 ({exc})")
        return None
    return value


def _paths(c: _Checker, table: Mapping[str, Any], name: str, prefix: str, *,
           required: bool = False, single: bool = True) -> list[tuple[str, Path]]:
    out = []
    for key, value in c.string_list(table, name, prefix, required=required, single=single):
        if not value:
            c.problem(key, "must be a path (a non-empty string)")
            continue
        path = c.resolve(value)
        if c.check_path(key, path, "file"):
            out.append((key, path))
        else:
            out.append((key, path))
    if required and name in table and not out and not any(
            p.key.startswith(_join(prefix, name)) for p in c.problems):
        c.problem(_join(prefix, name), "must name at least one file")
    return out


def _imap(c: _Checker, net: Mapping[str, Any], prefix: str) -> ImapConfig | None:
    p = f"{prefix}.imap"
    table = c.table(net, "imap", p, required=False)
    if table is None:
        return None
    c.unknown_keys(table, _IMAP_KEYS, p)
    host = c.string(table, "host", p, required=True)
    if "host" in table and isinstance(table["host"], str) and (
            not host or any(ch.isspace() for ch in host)):
        c.problem(f"{p}.host", "not a valid host name")
    port = c.integer(table, "port", p, 993, maximum=65535)
    user = c.string(table, "user", p, required=True)
    password_file = c.path(table, "password_file", p, required=True)
    if password_file is not None and password_file.is_file():
        c.read(f"{p}.password_file", password_file)
        c.secret_mode(f"{p}.password_file", password_file)
    tls_ca = c.path(table, "tls_ca", p)
    c.certificates(f"{p}.tls_ca", tls_ca)
    client_cert = c.path(table, "client_cert", p)
    client_key = c.path(table, "client_key", p)
    if ("client_cert" in table) != ("client_key" in table):
        missing = "client_cert" if "client_cert" not in table else "client_key"
        c.problem(f"{p}.{missing}", "client_cert and client_key go together")
    elif client_cert is not None or client_key is not None:
        c.key_pair(p, "client_cert", "client_key", cert_path=client_cert, key_path=client_key,
                   what="IMAP client certificate")
    folders = {}
    for name, default in (("mailbox", "INBOX"), ("processing_folder", "Passerelle/Processing"),
                          ("rejected_folder", "Passerelle/Rejected")):
        folders[name] = c.string(table, name, p, default)
        if not folders[name]:
            c.problem(f"{p}.{name}", "must not be empty")
    if len(set(folders.values())) < len(folders):
        c.problem(f"{p}.processing_folder",
                  "mailbox, processing_folder and rejected_folder must differ")
    return ImapConfig(
        host=host, user=user, password_file=password_file or Path(), port=port,
        mailbox=folders["mailbox"], processing_folder=folders["processing_folder"],
        rejected_folder=folders["rejected_folder"],
        lease_seconds=c.seconds(table, "lease_seconds", p, 600.0),
        poll_seconds=c.seconds(table, "poll_seconds", p, 30.0),
        tls_ca=tls_ca, client_cert=client_cert, client_key=client_key,
    )


def _rewrite(c: _Checker, net: Mapping[str, Any], prefix: str) -> RewriteRule | None:
    p = f"{prefix}.rewrite"
    table = c.table(net, "rewrite", p, required=False)
    if table is None:
        return None
    c.unknown_keys(table, ("domain",), p)
    domain = c.string(table, "domain", p, required=True)
    if "domain" in table and isinstance(table["domain"], str):
        normalised, reason = check_domain_pattern(domain, wildcard=False)
        if normalised is None:
            c.problem(f"{p}.domain", reason or "bad address pattern")
            return None
        return RewriteRule(domain=normalised)
    return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _network(c: _Checker, name: str, table: Mapping[str, Any]) -> NetworkConfig:
    p = f"networks.{name}"
    c.unknown_keys(table, _NETWORK_KEYS, p)

    domains = []
    for key, value in c.string_list(table, "domains", p, required=True):
        normalised, reason = check_domain_pattern(value)
        if normalised is None:
            c.problem(key, reason or "bad address pattern")
        else:
            domains.append(normalised)
    if "domains" in table and isinstance(table["domains"], list) and not table["domains"]:
        c.problem(f"{p}.domains", "must list at least one domain pattern")

    anchors = _paths(c, table, "trust_anchors", p, required=True)
    for key, path in anchors:
        for cert in c.certificates(key, path) or ():
            if cert.not_valid_after_utc < c.now:
                c.warn(key, f"a trust anchor of {path} expired on "
                            f"{cert.not_valid_after_utc:%Y-%m-%d}")
    intermediates = _paths(c, table, "intermediates", p)
    for key, path in intermediates:
        c.certificates(key, path)
    crls = _paths(c, table, "crls", p)
    for key, path in crls:
        c.crl(key, path)

    smime_cert = c.path(table, "smime_cert", p, required=True)
    smime_key = c.path(table, "smime_key", p, required=True)
    c.key_pair(p, "smime_cert", "smime_key", cert_path=smime_cert, key_path=smime_key,
               what="the gateway's S/MIME certificate")
    directory = c.path(table, "directory", p, kind="dir", required=True)

    imap = _imap(c, table, p)
    listen = _host_port(c, table, "listen", p, required=False)
    if "listen" not in table and imap is None and "imap" not in table:
        c.problem(f"{p}.listen", "missing required key (needed unless imap is configured)")
    tls_cert = c.path(table, "tls_cert", p, required="listen" in table)
    tls_key = c.path(table, "tls_key", p, required="listen" in table)
    if tls_cert is not None or tls_key is not None:
        c.key_pair(p, "tls_cert", "tls_key", cert_path=tls_cert, key_path=tls_key,
                   what="the TLS certificate")
    relay = _host_port(c, table, "relay", p, required=True)
    require_starttls = c.boolean(table, "require_starttls", p, True)
    if not require_starttls:
        host = (listen or "").rpartition(":")[0].strip("[]")
        if listen is not None and not _is_loopback(host):
            c.problem(f"{p}.require_starttls",
                      "false only on a loopback listen address (127.0.0.0/8 or ::1)")
        if c.boolean(table, "require_client_cert", p, False):
            c.problem(f"{p}.require_starttls",
                      "false cannot go with require_client_cert = true (no TLS, no certificate)")

    client_ca = c.path(table, "client_ca", p)
    c.certificates(f"{p}.client_ca", client_ca)
    relay_cert = c.path(table, "relay_tls_cert", p)
    relay_key = c.path(table, "relay_tls_key", p)
    if ("relay_tls_cert" in table) != ("relay_tls_key" in table):
        missing = "relay_tls_cert" if "relay_tls_cert" not in table else "relay_tls_key"
        c.problem(f"{p}.{missing}", "relay_tls_cert and relay_tls_key go together")
    elif relay_cert is not None or relay_key is not None:
        c.key_pair(p, "relay_tls_cert", "relay_tls_key", cert_path=relay_cert,
                   key_path=relay_key, what="the relay client certificate")
    relay_ca = c.path(table, "relay_ca", p)
    c.certificates(f"{p}.relay_ca", relay_ca)

    # Kept as written (lower-cased): it becomes a MIME charset label, so the codec's own
    # name ("iso8859-1") would not do; it only has to be a charset Python can encode.
    charset = c.string(table, "charset", p, DEFAULT_CHARSETS[name]).lower()
    try:
        codecs.lookup(charset)
    except LookupError:
        c.problem(f"{p}.charset", "unknown charset")
    utf8 = []
    for key, value in c.string_list(table, "utf8_recipients", p):
        address, reason = check_address(value)
        if address is None:
            c.problem(key, reason or "bad address")
        elif domains and not any(domain_matches(d, address.rpartition("@")[2])
                                 for d in domains):
            c.problem(key, f"not an address of the {name} domains")
        else:
            utf8.append(address)

    return NetworkConfig(
        name=name, domains=tuple(domains),
        trust_anchors=tuple(path for _, path in anchors),
        crls=tuple(path for _, path in crls),
        smime_cert=smime_cert or Path(), smime_key=smime_key or Path(),
        directory=directory or Path(), relay=relay or "",
        intermediates=tuple(path for _, path in intermediates),
        listen=listen, tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca,
        require_client_cert=c.boolean(table, "require_client_cert", p, False),
        proxy_protocol=c.boolean(table, "proxy_protocol", p, False),
        require_starttls=require_starttls,
        relay_tls_cert=relay_cert, relay_tls_key=relay_key,
        relay_tls_verify=c.boolean(table, "relay_tls_verify", p, True), relay_ca=relay_ca,
        charset=charset, utf8_recipients=tuple(utf8), imap=imap,
        rewrite=_rewrite(c, table, p),
    )


def _networks(c: _Checker, data: Mapping[str, Any]) -> dict[str, NetworkConfig]:
    table = c.table(data, "networks", "networks", required=True)
    if table is None:
        return {}
    for name in table:
        if name not in NETWORK_NAMES:
            c.problem(f"networks.{name}", "unknown network (expected apicrypt or mssante)")
    networks = {}
    for name in NETWORK_NAMES:
        net = c.table(table, name, f"networks.{name}", required=True)
        if net is not None:
            networks[name] = _network(c, name, net)
    if len(networks) == 2:
        for a in networks["apicrypt"].domains:
            for m in networks["mssante"].domains:
                if patterns_overlap(a, m):
                    c.problem("networks.mssante.domains",
                              f"{m!r} overlaps {a!r} of networks.apicrypt.domains")
    return networks


def _address_book(c: _Checker, data: Mapping[str, Any],
                  networks: Mapping[str, NetworkConfig]) -> tuple[AddressPair, ...]:
    if "address_book" not in data:
        return ()
    entries = data["address_book"]
    if not isinstance(entries, list):
        c.problem("address_book", "must be an array of tables ([[address_book]])")
        return ()
    pairs = []
    seen: dict[tuple[str, str], str] = {}
    for i, entry in enumerate(entries):
        p = f"address_book[{i}]"
        if not isinstance(entry, dict):
            c.problem(p, "must be a table")
            continue
        c.unknown_keys(entry, NETWORK_NAMES, p)
        values: dict[str, str] = {}
        for name in NETWORK_NAMES:
            key = f"{p}.{name}"
            raw = c.string(entry, name, p, required=True)
            if name not in entry or not isinstance(entry[name], str):
                continue
            address, reason = check_address(raw)
            if address is None:
                c.problem(key, reason or "bad address")
                continue
            net = networks.get(name)
            if net is not None and net.domains and not net.owns(address):
                c.problem(key, f"not in the domains of networks.{name}")
            previous = seen.get((name, address))
            if previous is not None:
                c.problem(key, f"duplicate address (also at {previous})")
            seen[(name, address)] = key
            values[name] = address
        if len(values) == 2:
            pairs.append(AddressPair(apicrypt=values["apicrypt"], mssante=values["mssante"]))
    return tuple(pairs)


def load_config(path: Path, *, now: dt.datetime | None = None) -> Config:
    """Read and check ``path``; raise ``ConfigError`` with every problem found.

    ``now`` (default: the current time) is when certificate validity is judged.
    """
    file = Path(os.path.abspath(path))
    c = _Checker(file, now or dt.datetime.now(dt.UTC))
    try:
        data = tomllib.loads(file.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(file), "(file)",
                                         f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem(str(file), "(file)", "not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(str(file), "(syntax)",
                                         f"TOML syntax error: {exc}")]) from None
    c.unknown_keys(data, ("gateway", "networks", "address_book"), "")
    gateway = _gateway(c, data)
    networks = _networks(c, data)
    book = _address_book(c, data, networks)
    if c.problems:
        raise ConfigError(c.problems)
    return Config(path=file, gateway=gateway, networks=MappingProxyType(networks),
                  address_book=book, warnings=tuple(c.warnings))


def addresses_of(pairs: Sequence[AddressPair], network: str) -> frozenset[str]:
    """Every address of ``network`` in the address book."""
    return frozenset(pair.on(network) for pair in pairs)
