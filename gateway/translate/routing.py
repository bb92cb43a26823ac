"""Envelope policy: which sender may enter from a network, where each recipient goes.

Rule kept here: **no open relay**. A message that enters from network S may only go to the
other network D, and only to an address the gateway can *derive* from the recipient it was
given: through the static address book, or through the reversible rewrite rule of S. Anything
this module cannot prove is refused (``RecipientRefused`` / ``SenderRefused``, both ``550 5.7.1``).
Pure: no I/O, no clock, no logging; the transports call it at ``MAIL`` and ``RCPT``.

Addresses are normalised strictly before any comparison (``normalise_address``): one level of
``<>``, no source route, no ``%`` or ``!`` (old relay hacks), no quoted local part, exactly one
``@``, no empty part, no whitespace or control character, no address literal, no trailing dot;
the local part is lower-cased (both networks treat addresses case-insensitively), the domain is
lower-cased and IDN labels become A-labels with the stdlib ``idna`` codec -- only labels already
in their canonical form, so that a look-alike (full-width letters, ``ß``...) cannot be mapped onto
a configured domain by normalisation. 8-bit characters are allowed in the domain only.

The model. Each network has domain patterns (``example.org`` exactly, ``*.example.org`` any
subdomain) and optionally a *rewrite domain*: a domain the gateway owns on that network, whose
addresses ``local=domain@rewrite`` stand for ``local@domain`` on the other network. An address
book pair ``(apicrypt=A, mssante=M)`` says that A and M are the same person seen from each
network; one of them is the real mailbox, the other the alias the gateway answers for.

* Recipient ``R`` of a message from S: if ``R`` is ``pair[S]`` of a pair, the destination is
  ``pair[D]``; else if ``R`` is ``local=domain@S.rewrite_domain``, the destination is
  ``local@domain``. The destination must be inside D's domains and must **not** be one of the
  gateway's own alias addresses on D (its domain is not ``D.rewrite_domain``): mail is never routed
  onto an alias, which is how "the recipient must not be one of S's own users" is enforced for a
  book pair whose S side is the real mailbox (its D side is an alias), and how alias chains
  (``a=b=c@...``) and loops through the gateway are cut.
* Sender of a message from S: must be inside S's domains and not on S's rewrite domain (the
  gateway's aliases never send into the gateway). ``reverse_sender`` gives its address on D, so
  that replies route back: the book pair's D side, else ``local=domain@D.rewrite_domain``, else
  the sender is refused (a reply could not route).
* The null sender ``<>`` (bounces, and RFC 8098 MDNs) is refused: the gateway relays only mail
  that a user signed and encrypted, a null sender has no address to verify the signer against
  nor to map a reply to, and an unsigned DSN would be refused at DATA anyway. Refusing at MAIL
  answers early and clearly (``NULL_SENDER_REFUSED``).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from gateway import errors
from gateway.errors import Reply

if TYPE_CHECKING:  # only for the type of routing_from_config's argument
    from gateway.config import Config

NETWORKS: tuple[str, str] = ("apicrypt", "mssante")

# Replies specific to the envelope policy (errors.py holds the common ones).
NULL_SENDER_REFUSED = Reply(550, "5.7.1",
                            "Null sender not accepted: only signed user mail is relayed")
SENDER_NOT_REVERSIBLE = Reply(550, "5.7.1",
                              "Sender has no address on the destination network")
MALFORMED_RECIPIENT = Reply(553, "5.1.3", "Recipient address not accepted: bad syntax")
MALFORMED_SENDER = Reply(553, "5.1.7", "Sender address not accepted: bad syntax")

MAX_ADDRESS = 254  # RFC 5321 path (256) minus the angle brackets
MAX_DOMAIN = 253
MAX_LABEL = 63
# RFC 5322 atext minus "%" and "!" (source-routing hacks of old relays), plus "." for dot-atoms.
_LOCAL_CHARS = frozenset(string.ascii_letters + string.digits + "#$&'*+-/=?^_`{|}~.")
_LDH = frozenset(string.ascii_lowercase + string.digits + "-")
REWRITE_SEPARATOR = "="
_SPECIALS = frozenset('<>(),;:\\"')


class _Bad(Exception):
    """Internal: why an address is refused (turned into the caller's error type)."""


def _a_label(label: str) -> str:
    """One domain label as a lower-case A-label; refuses anything not canonical."""
    if not label:
        raise _Bad("empty domain label")
    if label.isascii():
        result = label.lower()
        if result.startswith("xn--"):
            try:  # an A-label given as such must decode and re-encode to itself
                unicode = result.encode("ascii").decode("idna")
                if unicode.encode("idna").decode("ascii") != result:
                    raise _Bad("non-canonical A-label")
            except UnicodeError:
                raise _Bad("invalid A-label") from None
    else:
        lowered = label.lower()
        try:
            result = lowered.encode("idna").decode("ascii").lower()
            back = result.encode("ascii").decode("idna")
        except UnicodeError:
            raise _Bad("invalid IDN label") from None
        # Nameprep maps full-width letters, "ß", compatibility forms... onto other labels: a
        # label that does not survive the round trip is a look-alike, not a name.
        if back != lowered or not result.startswith("xn--"):
            raise _Bad("non-canonical IDN label")
    if not 0 < len(result) <= MAX_LABEL or not set(result) <= _LDH:
        raise _Bad("invalid domain label")
    if result.startswith("-") or result.endswith("-"):
        raise _Bad("invalid domain label")
    return result


def _domain(domain: str) -> str:
    if not domain:
        raise _Bad("empty domain")
    if domain.startswith("["):
        raise _Bad("address literal")
    if domain.endswith("."):
        raise _Bad("trailing dot in domain")
    labels = [_a_label(label) for label in domain.split(".")]
    if len(labels) < 2:
        raise _Bad("domain is not fully qualified")
    if labels[-1].isdigit():
        raise _Bad("numeric top-level label")
    result = ".".join(labels)
    if len(result) > MAX_DOMAIN:
        raise _Bad("domain too long")
    return result


def _local(local: str) -> str:
    if not local:
        raise _Bad("empty local part")
    if local.startswith('"'):
        raise _Bad("quoted local part")
    if not local.isascii():
        raise _Bad("8-bit local part")
    if "%" in local or "!" in local:
        raise _Bad("relay hack in local part")
    if not set(local) <= _LOCAL_CHARS:
        raise _Bad("invalid character in local part")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise _Bad("invalid dots in local part")
    return local.lower()


def _normalise(raw: str) -> str:
    if not isinstance(raw, str):
        raise _Bad("not a string")
    value = raw
    if value.startswith("<") and value.endswith(">") and len(value) >= 2:
        value = value[1:-1]
    if not value:
        raise _Bad("null address")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise _Bad("whitespace or control character")
    if value.startswith("@"):
        raise _Bad("source route")
    if value.startswith('"'):
        raise _Bad("quoted local part")
    if value.count("@") != 1:
        raise _Bad("expected exactly one @")
    if "[" in value or "]" in value:
        raise _Bad("address literal")
    if any(c in _SPECIALS for c in value):
        raise _Bad("forbidden character")
    local, _, domain = value.partition("@")
    address = f"{_local(local)}@{_domain(domain)}"
    if len(address) > MAX_ADDRESS:
        raise _Bad("address too long")
    return address


# Accepted envelope addresses and their canonical form (a pure function: bounded memo).
_NORMALISED: dict[str, str] = {}
_NORMALISED_SIZE = 4096


def normalise_address(raw: str, *, sender: bool = False) -> str:
    """The canonical form of an envelope address, or ``RecipientRefused`` (``SenderRefused``
    with ``sender=True``) with the reply ``553 5.1.3`` (``5.1.7``) if it is not acceptable.
    """
    cached = _NORMALISED.get(raw) if isinstance(raw, str) else None
    if cached is not None:
        return cached
    try:
        address = _normalise(raw)
    except _Bad as exc:
        if sender:
            raise errors.SenderRefused(f"sender address refused: {exc}",
                                       reply=MALFORMED_SENDER) from None
        raise errors.RecipientRefused(f"recipient address refused: {exc}",
                                      reply=MALFORMED_RECIPIENT) from None
    if len(raw) <= MAX_ADDRESS:  # accepted addresses only; the same few recur all day
        if len(_NORMALISED) >= _NORMALISED_SIZE:
            _NORMALISED.clear()
        _NORMALISED[raw] = address
    return address


def _domain_pattern(pattern: str) -> str:
    star = pattern.startswith("*.")
    try:
        domain = _domain(pattern[2:] if star else pattern)
    except _Bad as exc:
        raise ValueError(f"bad domain pattern: {exc}") from None
    return "*." + domain if star else domain


def domain_matches(pattern: str, domain: str) -> bool:
    """``example.org`` matches itself only; ``*.example.org`` any subdomain, not itself."""
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:]) and len(domain) > len(pattern) - 1
    return domain == pattern


@dataclass(frozen=True)
class NetworkRoutes:
    """What the routing knows of one network: its domains and the gateway's alias domain."""

    domains: tuple[str, ...]
    rewrite_domain: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(_domain_pattern(d) for d in self.domains))
        if self.rewrite_domain is not None:
            try:
                object.__setattr__(self, "rewrite_domain", _domain(self.rewrite_domain))
            except _Bad as exc:
                raise ValueError(f"bad rewrite domain: {exc}") from None

    def owns(self, address: str) -> bool:
        """Is the (normalised) address inside this network's domains?"""
        domain = address.rpartition("@")[2]
        return any(domain_matches(p, domain) for p in self.domains)

    def is_alias(self, address: str) -> bool:
        """Is the (normalised) address on the gateway's own alias domain of this network?"""
        return (self.rewrite_domain is not None
                and address.rpartition("@")[2] == self.rewrite_domain)


@dataclass(frozen=True)
class RoutingTable:
    """Both networks' routes and the address book; built once per configuration."""

    networks: Mapping[str, NetworkRoutes]
    # (apicrypt address, mssante address) pairs.
    address_book: tuple[tuple[str, str], ...] = ()
    _index: Mapping[str, Mapping[str, tuple[str, str]]] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if set(self.networks) != set(NETWORKS):
            raise ValueError("a routing table needs exactly the networks apicrypt and mssante")
        object.__setattr__(self, "networks", MappingProxyType(dict(self.networks)))
        pairs = []
        index: dict[str, dict[str, tuple[str, str]]] = {name: {} for name in NETWORKS}
        for apicrypt, mssante in self.address_book:
            try:
                pair = (_normalise(apicrypt), _normalise(mssante))
            except _Bad as exc:
                raise ValueError(f"bad address book entry: {exc}") from None
            pairs.append(pair)
            for name, address in zip(NETWORKS, pair, strict=True):
                if address in index[name]:
                    raise ValueError("duplicate address in the address book")
                index[name][address] = pair
        object.__setattr__(self, "address_book", tuple(pairs))
        object.__setattr__(self, "_index", MappingProxyType(
            {name: MappingProxyType(entries) for name, entries in index.items()}))

    def pair_for(self, network: str, address: str) -> tuple[str, str] | None:
        """The address book pair whose ``network`` side is ``address`` (normalised)."""
        return self._index[network].get(address)


def build_table(domains: Mapping[str, Iterable[str]],
                rewrite_domains: Mapping[str, str | None] | None = None,
                address_book: Iterable[tuple[str, str]] = ()) -> RoutingTable:
    """Convenience constructor: ``{"apicrypt": [...], "mssante": [...]}`` and friends."""
    rewrites = rewrite_domains or {}
    return RoutingTable(
        networks={name: NetworkRoutes(tuple(domains[name]), rewrites.get(name))
                  for name in NETWORKS},
        address_book=tuple(address_book),
    )


def routing_from_config(config: Config) -> RoutingTable:
    """The routing table of a loaded configuration."""
    networks = {}
    for name in NETWORKS:
        net = config.network(name)
        networks[name] = NetworkRoutes(net.domains,
                                       net.rewrite.domain if net.rewrite else None)
    return RoutingTable(networks=networks,
                        address_book=tuple((p.apicrypt, p.mssante) for p in config.address_book))


def other(network: str) -> str:
    if network not in NETWORKS:
        raise errors.InternalError("unknown network")
    return NETWORKS[1] if network == NETWORKS[0] else NETWORKS[0]


def _pair_side(pair: tuple[str, str], network: str) -> str:
    return pair[NETWORKS.index(network)]


def booked_counterpart(table: RoutingTable, source: str, address: str) -> str | None:
    """The other network's side of the address book pair of ``address`` (normalised), if any."""
    pair = table.pair_for(source, address)
    return None if pair is None else _pair_side(pair, other(source))


def route_recipient(table: RoutingTable, source: str, rcpt: str) -> str:
    """The destination address (on the other network) of recipient ``rcpt`` of a message
    entering from ``source``; ``RecipientRefused`` if the gateway cannot route it.
    """
    destination = other(source)
    address = normalise_address(rcpt)
    src, dst = table.networks[source], table.networks[destination]
    pair = table.pair_for(source, address)
    target: str | None = None
    if pair is not None:
        target = _pair_side(pair, destination)
    elif src.is_alias(address):
        encoded = address.partition("@")[0]
        local, sep, domain = encoded.rpartition(REWRITE_SEPARATOR)
        if not sep or not local:
            raise errors.RecipientRefused("alias without an encoded destination")
        try:
            target = _normalise(f"{local}@{domain}")
        except _Bad as exc:
            raise errors.RecipientRefused(f"alias encodes a bad address: {exc}") from None
    if target is None:
        raise errors.RecipientRefused("recipient is neither in the address book nor an alias")
    if not dst.owns(target):
        raise errors.RecipientRefused("destination is not on the other network")
    if dst.is_alias(target):
        raise errors.RecipientRefused("destination is one of the gateway's own aliases")
    return target


def check_sender(table: RoutingTable, source: str, mail_from: str) -> str:
    """The normalised sender if it may send from ``source``; ``SenderRefused`` otherwise."""
    other(source)  # validates the network name
    if mail_from in ("", "<>"):
        raise errors.SenderRefused("null sender", reply=NULL_SENDER_REFUSED)
    address = normalise_address(mail_from, sender=True)
    src = table.networks[source]
    if not src.owns(address):
        raise errors.SenderRefused("sender is not on the source network")
    if src.is_alias(address):
        raise errors.SenderRefused("sender is one of the gateway's own aliases")
    return address


def reverse_sender(table: RoutingTable, source: str, mail_from: str) -> str:
    """The sender's address on the destination network, so that replies come back to it."""
    return reverse_checked(table, source, check_sender(table, source, mail_from))


def reverse_checked(table: RoutingTable, source: str, address: str) -> str:
    """``reverse_sender`` of an address ``check_sender`` has already returned."""
    destination = other(source)
    dst = table.networks[destination]
    pair = table.pair_for(source, address)
    if pair is not None:
        return _pair_side(pair, destination)
    if dst.rewrite_domain is None:
        raise errors.SenderRefused("no address book entry and no rewrite rule for the sender",
                                   reply=SENDER_NOT_REVERSIBLE)
    local, _, domain = address.partition("@")
    alias = f"{local}{REWRITE_SEPARATOR}{domain}@{dst.rewrite_domain}"
    if len(alias) > MAX_ADDRESS:
        raise errors.SenderRefused("rewritten sender address too long",
                                   reply=SENDER_NOT_REVERSIBLE)
    return alias
