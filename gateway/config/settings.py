"""The values of a configuration: frozen dataclasses, each setting's default written once.

Rule kept here: a setting's default lives in its dataclass field and nowhere else. The reader
(``gateway.config.sections``) derives the keys it accepts and the defaults it falls back to
from these fields (``keys_of``, ``default_of``); the transports take theirs from here too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from gateway import errors
from gateway.config.addresses import address, checked, in_domains

Network = Literal["apicrypt", "mssante"]
NETWORK_NAMES: tuple[Network, Network] = ("apicrypt", "mssante")
DEFAULT_CHARSETS: Mapping[str, str] = MappingProxyType(
    {"apicrypt": "iso-8859-1", "mssante": "utf-8"})
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EXPIRY_WARNING = dt.timedelta(days=30)


def other(name: str) -> Network:
    """The network a message entering from ``name`` goes to."""
    if name == "apicrypt":
        return "mssante"
    if name == "mssante":
        return "apicrypt"
    raise errors.InternalError("unknown network")


def keys_of(cls: type[Any], *, exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The configuration keys of a settings dataclass: its field names."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in exclude)


def default_of(cls: type[Any], name: str) -> Any:
    """The default of field ``name`` of a settings dataclass (the one place it is written)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise KeyError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name}")


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
    # A session that has not started TLS within this many seconds is closed (421): plain
    # connections only hold a slot. Idle plain sessions are also the first dropped when the
    # listener is full.
    starttls_seconds: float = 30.0
    session_seconds: float = 900.0  # any session is closed after this long (421)
    # NOOP/RSET/HELP/VRFY without a message between them: 421 (Postfix smtpd_junk_command_limit)
    max_idle_commands: int = 100
    rate_limit_per_minute: int = 120  # per envelope sender
    max_depth: int = 6  # MIME / S/MIME nesting
    # A client whose messages are refused after decryption this many times in a minute is
    # answered 451 4.7.0 for ``suspect_hold_seconds``, without decrypting (padding oracles need
    # thousands of queries); 0 turns the hold off.
    # Refuse a signature whose signingTime is older than this many days (a replayed message);
    # 0: no limit.
    max_signing_age_days: int = 0
    content_refusals_per_minute: int = 10
    suspect_hold_seconds: float = 600.0
    # Messages up to this size are translated on the event loop (see Gateway._relay); bigger
    # ones in the thread pool. 0: every translation in the pool.
    translate_inline_bytes: int = 65_536

    @property
    def max_signing_age(self) -> dt.timedelta | None:
        days = self.max_signing_age_days
        return dt.timedelta(days=days) if days else None


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
class LdapConfig:
    """``[networks.<name>.ldap]``: the network's LDAP directory of users and certificates."""

    url: str  # ldaps://host:636, or ldap://host:389 (then StartTLS unless starttls = false)
    base_dn: str
    ca_file: Path | None = None  # CAs of the directory's TLS certificate (default: the system's)
    starttls: bool = True  # ldap:// URLs: false only for a loopback directory
    bind_dn: str | None = None  # None: anonymous bind
    password_file: Path | None = None
    # {address} is replaced by the address, escaped (RFC 4515)
    certificate_filter: str = "(mail={address})"
    certificate_attributes: tuple[str, ...] = ("userCertificate;binary",)
    # "address of alias": the entry of a user reached under ``{address}`` (their alias on the
    # other network); their own address is the value of ``address_attribute`` on this network.
    # None: aliases come from [[address_book]] and the rewrite rule only.
    alias_filter: str | None = None
    address_attribute: str = "mail"
    timeout_seconds: float = 5.0  # per query; past it the message is answered 451
    cache_seconds: float = 3600.0  # how long a found certificate is used without asking again
    negative_cache_seconds: float = 60.0  # how long "no such user" is remembered
    cache_size: int = 20000  # addresses remembered (hits and misses)


@dataclass(frozen=True)
class DocumentSettings:
    """``[networks.<name>.documents]``: the identifiers the gateway writes in the CDA/XDM
    documents it makes for this network (mssante). The ``1.2.250.1.999`` roots are
    placeholders: a deployment registers its own OIDs and names its FINESS."""

    patient_id_root: str = "1.2.250.1.999.1.1"  # root of HPRIM patient codes
    author_id_root: str = "1.2.250.1.999.1.2"  # root of authors without an RPPS
    lab_code_system: str = "1.2.250.1.999.1.3"  # the labs' own analysis codes
    source_id: str = "1.2.250.1.999.1.9"  # XDSSubmissionSet.sourceId: this gateway
    custodian_finess: str = "000000000"  # FINESS of the organisation keeping the documents
    custodian_name: str = ""  # its name (default: the author's organisation or name)


@dataclass(frozen=True)
class NetworkConfig:
    """``[networks.<name>]``: everything the gateway knows about one network."""

    name: Network
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
    # Write AuthEnvelopedData (AES-256-GCM, RFC 5083/5084) toward this network instead of
    # EnvelopedData (AES-256-CBC): once its software reads it.
    encrypt_gcm: bool = False
    # "fail-open": a stale or missing CRL is a warning; "fail-closed": a signer or recipient
    # whose issuer has no fresh CRL is answered 451 until one is loaded (SIGHUP).
    crl_policy: Literal["fail-open", "fail-closed"] = "fail-open"
    # False: refuse EnvelopedData (AES-CBC, unauthenticated) from this network (5.7.5), once
    # its senders write AuthEnvelopedData.
    accept_cbc: bool = True
    utf8_recipients: tuple[str, ...] = ()
    imap: ImapConfig | None = None
    rewrite: RewriteRule | None = None
    documents: DocumentSettings = field(default_factory=DocumentSettings)
    ldap: LdapConfig | None = None  # the recipients' certificates come from LDAP, not a folder
    # one domain or pattern a line (the operators' published list of the trust space), added
    # to ``domains``; read again on every reload
    domains_file: Path | None = None
    file_domains: int = 0  # how many came from it (for the log), not a configuration key

    def owns(self, raw: str) -> bool:
        """True if ``raw`` is a valid address with a domain of this network's patterns."""
        normalised, _ = checked(address, raw)
        return normalised is not None and in_domains(normalised, self.domains)

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
    # The person's name, as mail clients show it: a display name that reads as this person is
    # dropped from mail another signer wrote (their certificates' names count as well).
    name: str = ""

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
    def other(name: str) -> Network:
        return other(name)



def addresses_of(pairs: Sequence[AddressPair], network: str) -> frozenset[str]:
    """Every address of ``network`` in the address book."""
    return frozenset(pair.on(network) for pair in pairs)


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
