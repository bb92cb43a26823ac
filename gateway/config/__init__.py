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
A-labels, look-alikes refused (``gateway.config.addresses``: the rule routing applies too).
Domain patterns are ``example.org`` (that domain exactly) or ``*.example.org`` (any subdomain
of it, not ``example.org`` itself).

The package, by what it reads: ``settings`` (the dataclasses: every key and default, once),
``addresses`` (the one address rule, shared with routing), ``files`` (certificates, CRLs and keys,
also for the runtime), ``checker`` (typed reading, problems under their keys), ``sections``
(``[gateway]``, imap, rewrite) and ``networks`` (the networks and the address book).
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from gateway.config import networks, sections
from gateway.config.addresses import (
    AddressError,
    domain_matches,
    normalise_address,
    patterns_overlap,
)
from gateway.config.checker import Checker
from gateway.config.files import (
    KeyPair,
    PrivateKey,
    load_identity,
    parse_certificates,
    parse_crls,
    parse_private_key,
    read_certificates,
    read_crls,
    read_private_key,
)
from gateway.config.settings import (
    DEFAULT_CHARSETS,
    NETWORK_NAMES,
    AddressPair,
    Config,
    DocumentSettings,
    GatewaySettings,
    ImapConfig,
    Network,
    NetworkConfig,
    RewriteRule,
    addresses_of,
    default_of,
    keys_of,
    other,
    split_host_port,
)
from gateway.errors import ConfigError, ConfigProblem

__all__ = [
    "DEFAULT_CHARSETS", "NETWORK_NAMES", "AddressError", "AddressPair", "Config",
    "DocumentSettings",
    "GatewaySettings", "ImapConfig", "KeyPair", "Network", "NetworkConfig", "PrivateKey",
    "RewriteRule", "addresses_of", "default_of", "domain_matches", "keys_of", "load_config",
    "load_identity", "normalise_address", "other", "parse_certificates", "parse_crls",
    "parse_private_key", "patterns_overlap", "read_certificates", "read_crls",
    "read_private_key", "split_host_port",
]


def _distinct_addresses(c: Checker, gateway: GatewaySettings,
                        nets: Mapping[str, NetworkConfig]) -> None:
    """Two listeners (or the metrics endpoint) on one address: with SO_REUSEPORT both would
    bind, and the kernel would mix the networks' mail (each listener judges its own)."""
    seen: dict[str, str] = {}
    bound = [(f"networks.{name}.listen", net.listen) for name, net in nets.items()]
    bound.append(("gateway.metrics_listen", gateway.metrics_listen))
    for key, address in bound:
        if address is None:
            continue
        host, _, port = address.rpartition(":")
        normal = f"{host.strip('[]').lower()}:{port}"
        if normal in seen:
            c.problem(key, f"same address as {seen[normal]} ({address})")
        seen[normal] = key


def load_config(path: Path, *, now: dt.datetime | None = None) -> Config:
    """Read and check ``path``; raise ``ConfigError`` with every problem found.

    ``now`` (default: the current time) is when certificate validity is judged.
    """
    file = Path(os.path.abspath(path))
    c = Checker(file, now or dt.datetime.now(dt.UTC))
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
    gateway = sections.gateway(c, data)
    nets = networks.networks(c, data)
    book = networks.address_book(c, data, nets)
    _distinct_addresses(c, gateway, nets)
    if c.problems:
        raise ConfigError(c.problems)
    return Config(path=file, gateway=gateway, networks=MappingProxyType(nets),
                  address_book=book, warnings=tuple(c.warnings))

