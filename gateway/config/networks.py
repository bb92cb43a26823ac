"""Reading the networks and the address book: domains, trust files, listeners, next hops.

Rule kept here: every address and domain pattern is judged by the one address rule
(``gateway.config.addresses``), the same one routing applies to envelopes, and each refusal is a
problem under its key (``address_book[0].apicrypt``); a CRL whose issuer is none of the
network's anchors or intermediates is a problem too (it would protect nothing).
"""

from __future__ import annotations

import codecs
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from gateway.config import sections
from gateway.config.addresses import (
    address,
    checked,
    domain_pattern,
    in_domains,
    patterns_overlap,
)
from gateway.config.checker import Checker
from gateway.config.sections import host_port, is_loopback, paths
from gateway.config.settings import (
    DEFAULT_CHARSETS,
    NETWORK_NAMES,
    AddressPair,
    Network,
    NetworkConfig,
    default_of,
    keys_of,
)

_N = functools.partial(default_of, NetworkConfig)  # its field defaults


def _crl_policy(c: Checker, table: Mapping[str, Any],
                prefix: str) -> Literal["fail-open", "fail-closed"]:
    value = c.string(table, "crl_policy", prefix, _N("crl_policy"))
    if value == "fail-closed":
        return "fail-closed"
    if value != "fail-open":
        c.problem(f"{prefix}.crl_policy", 'must be "fail-open" or "fail-closed"')
    return "fail-open"


def _issued(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Was ``crl`` issued (named and signed) by ``issuer``?"""
    if crl.issuer != issuer.subject:
        return False
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a key type that cannot sign CRLs
        return False


def _domains_file(c: Checker, key: str, path: Path | None, domains: list[str]) -> int:
    """Add the patterns of a domains file (one a line, ``#`` comments) to ``domains``; how
    many it held. A bad line is a problem naming its number: the list is taken whole or not."""
    if path is None or not path.is_file():
        return 0
    data = c.read(key, path)
    if data is None:
        return 0
    count = 0
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        normalised, reason = checked(domain_pattern, text)
        if normalised is None:
            c.problem(key, f"line {number}: bad domain pattern: {reason}")
            continue
        domains.append(normalised)
        count += 1
    if count == 0:
        c.problem(key, "holds no domain")
    return count


def network(c: Checker, name: Network, table: Mapping[str, Any]) -> NetworkConfig:
    p = f"networks.{name}"
    c.unknown_keys(table, keys_of(NetworkConfig, exclude=("name", "file_domains")), p)

    domains = []
    for key, value in c.string_list(table, "domains", p, required="domains_file" not in table):
        normalised, reason = checked(domain_pattern, value)
        if normalised is None:
            c.problem(key, f"bad address pattern: {reason}")
        else:
            domains.append(normalised)
    domains_file = c.path(table, "domains_file", p)
    from_file = _domains_file(c, f"{p}.domains_file", domains_file, domains)
    if not domains and "domains" in table and "domains_file" not in table:
        c.problem(f"{p}.domains", "must list at least one domain pattern")

    anchors = paths(c, table, "trust_anchors", p, required=True)
    intermediates = paths(c, table, "intermediates", p)
    loaded = [c.certificates(key, path) for key, path in anchors + intermediates]
    for (key, path), certs in zip(anchors, loaded, strict=False):
        for cert in certs or ():
            if cert.not_valid_after_utc < c.now:
                c.warn(key, f"a trust anchor of {path} expired on "
                            f"{cert.not_valid_after_utc:%Y-%m-%d}")
    issuers = [cert for certs in loaded for cert in certs or ()]
    # An unreadable anchor is reported already; judging CRLs without it would only add noise.
    judge_crls = all(certs for certs in loaded)
    crls = paths(c, table, "crls", p)
    for key, path in crls:
        for crl in c.crls(key, path):
            if judge_crls and not any(_issued(crl, issuer) for issuer in issuers):
                c.problem(key, f"a CRL of {path} was issued by none of the trust_anchors or "
                               "intermediates of this network: its revocations would apply "
                               "to no certificate")

    smime_cert = c.path(table, "smime_cert", p, required=True)
    smime_key = c.path(table, "smime_key", p, required=True)
    c.key_pair(p, "smime_cert", "smime_key", cert_path=smime_cert, key_path=smime_key,
               what="the gateway's S/MIME certificate")
    directory = c.path(table, "directory", p, kind="dir", required="ldap" not in table)

    imap = sections.imap(c, table, p)
    listen = host_port(c, table, "listen", p, required=False)
    if "listen" not in table and imap is None and "imap" not in table:
        c.problem(f"{p}.listen", "missing required key (needed unless imap is configured)")
    tls_cert = c.path(table, "tls_cert", p, required="listen" in table)
    tls_key = c.path(table, "tls_key", p, required="listen" in table)
    if tls_cert is not None or tls_key is not None:
        c.key_pair(p, "tls_cert", "tls_key", cert_path=tls_cert, key_path=tls_key,
                   what="the TLS certificate")
    relay = host_port(c, table, "relay", p, required=True)
    require_starttls = c.boolean(table, "require_starttls", p, _N("require_starttls"))
    if not require_starttls:
        host = (listen or "").rpartition(":")[0].strip("[]")
        if listen is not None and not is_loopback(host):
            c.problem(f"{p}.require_starttls",
                      "false only on a loopback listen address (127.0.0.0/8 or ::1)")
        if c.boolean(table, "require_client_cert", p, _N("require_client_cert")):
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
        normalised, reason = checked(address, value)
        if normalised is None:
            c.problem(key, f"bad address: {reason}")
        elif domains and not in_domains(normalised, tuple(domains)):
            c.problem(key, f"not an address of the {name} domains")
        else:
            utf8.append(normalised)

    return NetworkConfig(
        name=name, domains=tuple(domains),
        trust_anchors=tuple(path for _, path in anchors),
        crls=tuple(path for _, path in crls),
        smime_cert=smime_cert or Path(), smime_key=smime_key or Path(),
        directory=directory or Path(), relay=relay or "",
        intermediates=tuple(path for _, path in intermediates),
        listen=listen, tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca,
        require_client_cert=c.boolean(table, "require_client_cert", p,
                                      _N("require_client_cert")),
        proxy_protocol=c.boolean(table, "proxy_protocol", p, _N("proxy_protocol")),
        encrypt_gcm=c.boolean(table, "encrypt_gcm", p, _N("encrypt_gcm")),
        crl_policy=_crl_policy(c, table, p),
        accept_cbc=c.boolean(table, "accept_cbc", p, _N("accept_cbc")),
        require_starttls=require_starttls,
        relay_tls_cert=relay_cert, relay_tls_key=relay_key,
        relay_tls_verify=c.boolean(table, "relay_tls_verify", p, _N("relay_tls_verify")),
        relay_ca=relay_ca,
        charset=charset, utf8_recipients=tuple(utf8), imap=imap,
        rewrite=sections.rewrite(c, table, p),
        documents=sections.documents(c, table, p),
        domains_file=domains_file, file_domains=from_file,
        ldap=sections.ldap(c, table, p),
    )


def networks(c: Checker, data: Mapping[str, Any]) -> dict[str, NetworkConfig]:
    table = c.table(data, "networks", "networks", required=True)
    if table is None:
        return {}
    for name in table:
        if name not in NETWORK_NAMES:
            c.problem(f"networks.{name}", "unknown network (expected apicrypt or mssante)")
    networks: dict[str, NetworkConfig] = {}
    for name in NETWORK_NAMES:
        net = c.table(table, name, f"networks.{name}", required=True)
        if net is not None:
            networks[name] = network(c, name, net)
    if len(networks) == 2:
        for a in networks["apicrypt"].domains:
            for m in networks["mssante"].domains:
                if patterns_overlap(a, m):
                    c.problem("networks.mssante.domains",
                              f"{m!r} overlaps {a!r} of networks.apicrypt.domains")
    return networks


def address_book(c: Checker, data: Mapping[str, Any],
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
        c.unknown_keys(entry, (*NETWORK_NAMES, "name"), p)
        person = c.string(entry, "name", p)
        values: dict[str, str] = {}
        for name in NETWORK_NAMES:
            key = f"{p}.{name}"
            raw = c.string(entry, name, p, required=True)
            if name not in entry or not isinstance(entry[name], str):
                continue
            normalised, reason = checked(address, raw)
            if normalised is None:
                c.problem(key, f"bad address: {reason}")
                continue
            net = networks.get(name)
            if net is not None and net.domains and not in_domains(normalised, net.domains):
                c.problem(key, f"not in the domains of networks.{name}")
            previous = seen.get((name, normalised))
            if previous is not None:
                c.problem(key, f"duplicate address (also at {previous})")
            seen[(name, normalised)] = key
            values[name] = normalised
        if len(values) == 2:
            pairs.append(AddressPair(apicrypt=values["apicrypt"], mssante=values["mssante"],
                                     name=person or ""))
    return tuple(pairs)
