"""Reading the ``[gateway]`` table and the optional tables of a network (imap, rewrite).

Rule kept here: the keys a table accepts and the defaults it falls back to are those of its
dataclass (``keys_of``, ``default_of``): nothing here lists a key or repeats a default by hand,
except the bounds a value must respect.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.addresses import checked, domain
from gateway.config.checker import Checker, join
from gateway.config.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    DocumentSettings,
    GatewaySettings,
    ImapConfig,
    LdapConfig,
    RewriteRule,
    default_of,
    keys_of,
    split_host_port,
)

_G = functools.partial(default_of, GatewaySettings)  # its field defaults
_I = functools.partial(default_of, ImapConfig)  # its field defaults


def host_name(value: str) -> str:
    """A host name as EHLO and the banner say it: a domain, possibly a single label."""
    return domain(value, fqdn=False)


def gateway(c: Checker, data: Mapping[str, Any]) -> GatewaySettings:
    p = "gateway"
    table = c.table(data, "gateway", p, required=True)
    if table is None:
        return GatewaySettings(hostname="")  # reported; the config will not be used
    c.unknown_keys(table, keys_of(GatewaySettings), p)
    hostname = c.string(table, "hostname", p, required=True)
    if hostname:
        normalised, _ = checked(host_name, hostname)
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
    log_format = c.string(table, "log_format", p, _G("log_format"))
    if log_format not in LOG_FORMATS:
        c.problem(f"{p}.log_format", "must be \"json\" or \"console\"")
        log_format = _G("log_format")
    log_level = c.string(table, "log_level", p, _G("log_level")).lower()
    if log_level not in LOG_LEVELS:
        c.problem(f"{p}.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        log_level = _G("log_level")

    def seconds(name: str) -> float:
        return c.seconds(table, name, p, _G(name))

    def count(name: str, **bounds: int) -> int:
        return c.integer(table, name, p, _G(name), **bounds)

    return GatewaySettings(
        hostname=hostname,
        max_message_bytes=count("max_message_bytes", minimum=1024),
        max_recipients=count("max_recipients"),
        pseudonym_key_file=key_file,
        log_format="console" if log_format == "console" else "json",
        log_level=log_level,
        drain_seconds=seconds("drain_seconds"),
        summary_seconds=seconds("summary_seconds"),
        data_timeout_seconds=seconds("data_timeout_seconds"),
        command_timeout_seconds=seconds("command_timeout_seconds"),
        max_sessions=count("max_sessions"),
        max_sessions_per_ip=count("max_sessions_per_ip"),
        starttls_seconds=seconds("starttls_seconds"),
        session_seconds=seconds("session_seconds"),
        max_idle_commands=count("max_idle_commands"),
        rate_limit_per_minute=count("rate_limit_per_minute"),
        max_depth=count("max_depth", maximum=100),
        content_refusals_per_minute=count("content_refusals_per_minute", minimum=0),
        max_signing_age_days=count("max_signing_age_days", minimum=0),
        suspect_hold_seconds=seconds("suspect_hold_seconds"),
        metrics_listen=host_port(c, table, "metrics_listen", p, required=False),
        mlockall=c.boolean(table, "mlockall", p, _G("mlockall")),
        translate_inline_bytes=count("translate_inline_bytes", minimum=0, maximum=1_048_576),
    )


def host_port(c: Checker, table: Mapping[str, Any], name: str, prefix: str, *,
               required: bool) -> str | None:
    key = join(prefix, name)
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


def paths(c: Checker, table: Mapping[str, Any], name: str, prefix: str, *,
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
            p.key.startswith(join(prefix, name)) for p in c.problems):
        c.problem(join(prefix, name), "must name at least one file")
    return out


def imap(c: Checker, net: Mapping[str, Any], prefix: str) -> ImapConfig | None:
    p = f"{prefix}.imap"
    table = c.table(net, "imap", p, required=False)
    if table is None:
        return None
    c.unknown_keys(table, keys_of(ImapConfig), p)
    host = c.string(table, "host", p, required=True)
    if "host" in table and isinstance(table["host"], str) and (
            not host or any(ch.isspace() for ch in host)):
        c.problem(f"{p}.host", "not a valid host name")
    port = c.integer(table, "port", p, _I("port"), maximum=65535)
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
    for name in ("mailbox", "processing_folder", "rejected_folder"):
        folders[name] = c.string(table, name, p, _I(name))
        if not folders[name]:
            c.problem(f"{p}.{name}", "must not be empty")
    if len(set(folders.values())) < len(folders):
        c.problem(f"{p}.processing_folder",
                  "mailbox, processing_folder and rejected_folder must differ")
    return ImapConfig(
        host=host, user=user, password_file=password_file or Path(), port=port,
        mailbox=folders["mailbox"], processing_folder=folders["processing_folder"],
        rejected_folder=folders["rejected_folder"],
        lease_seconds=c.seconds(table, "lease_seconds", p, _I("lease_seconds")),
        poll_seconds=c.seconds(table, "poll_seconds", p, _I("poll_seconds")),
        tls_ca=tls_ca, client_cert=client_cert, client_key=client_key,
    )


_L = functools.partial(default_of, LdapConfig)  # its field defaults


def ldap(c: Checker, net: Mapping[str, Any], prefix: str) -> LdapConfig | None:
    p = f"{prefix}.ldap"
    table = c.table(net, "ldap", p, required=False)
    if table is None:
        return None
    c.unknown_keys(table, keys_of(LdapConfig), p)
    url = c.string(table, "url", p, required=True)
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rpartition(":")[0] or rest.split("/", 1)[0]
    if "url" in table and (scheme not in ("ldap", "ldaps") or not host):
        c.problem(f"{p}.url", "must be ldaps://host[:port] or ldap://host[:port]")
    starttls = c.boolean(table, "starttls", p, _L("starttls"))
    if scheme == "ldap" and not starttls and not is_loopback(host.strip("[]")):
        c.problem(f"{p}.starttls", "false only for a loopback directory (certificates would "
                                   "travel in clear)")
    base_dn = c.string(table, "base_dn", p, required=True)
    bind_dn = c.string(table, "bind_dn", p) or None
    password_file = c.path(table, "password_file", p, required=bind_dn is not None)
    if password_file is not None:
        c.secret_mode(f"{p}.password_file", password_file)

    def template(name: str, default: str) -> str:
        value = c.string(table, name, p, default)
        if value and ("{address}" not in value
                      or not (value.startswith("(") and value.endswith(")"))):
            c.problem(f"{p}.{name}", "must be an LDAP filter holding {address}")
        return value

    certificate_filter = template("certificate_filter", _L("certificate_filter"))
    attributes = tuple(v for _, v in c.string_list(table, "certificate_attributes", p)) or _L(
        "certificate_attributes")
    alias_filter = template("alias_filter", "") or None
    return LdapConfig(
        url=url, base_dn=base_dn, ca_file=c.path(table, "ca_file", p),
        starttls=starttls, bind_dn=bind_dn, password_file=password_file,
        certificate_filter=certificate_filter, certificate_attributes=attributes,
        alias_filter=alias_filter,
        address_attribute=c.string(table, "address_attribute", p, _L("address_attribute")),
        timeout_seconds=c.seconds(table, "timeout_seconds", p, _L("timeout_seconds")),
        cache_seconds=c.seconds(table, "cache_seconds", p, _L("cache_seconds")),
        negative_cache_seconds=c.seconds(table, "negative_cache_seconds", p,
                                         _L("negative_cache_seconds")),
        cache_size=c.integer(table, "cache_size", p, _L("cache_size"), maximum=10_000_000),
    )


_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


def documents(c: Checker, net: Mapping[str, Any], prefix: str) -> DocumentSettings:
    p = f"{prefix}.documents"
    table = c.table(net, "documents", p, required=False)
    default = DocumentSettings()
    if table is None:
        return default
    c.unknown_keys(table, keys_of(DocumentSettings), p)
    values: dict[str, str] = {}
    for name in keys_of(DocumentSettings):
        value = c.string(table, name, p, getattr(default, name)).strip()
        if name.endswith(("_root", "_system", "_id")) and not _OID.fullmatch(value):
            c.problem(f"{p}.{name}", "must be an OID (digits and dots: 1.2.250.1...)")
            continue
        if name == "custodian_finess" and not re.fullmatch(r"[0-9A-Z]{9,10}", value):
            c.problem(f"{p}.{name}", "must be a FINESS number (9 characters)")
            continue
        values[name] = value
    return DocumentSettings(**{**default.__dict__, **values})


def rewrite(c: Checker, net: Mapping[str, Any], prefix: str) -> RewriteRule | None:
    p = f"{prefix}.rewrite"
    table = c.table(net, "rewrite", p, required=False)
    if table is None:
        return None
    c.unknown_keys(table, keys_of(RewriteRule), p)
    value = c.string(table, "domain", p, required=True)
    if "domain" in table and isinstance(table["domain"], str):
        normalised, reason = checked(domain, value)
        if normalised is None:
            c.problem(f"{p}.domain", f"bad domain: {reason}")
            return None
        return RewriteRule(domain=normalised)
    return None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

