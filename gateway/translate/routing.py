"""Envelope policy: which sender may enter from a network, where each recipient goes.

Rule kept here: **no open relay**. A message that enters from network S may only go to the
other network D, and only to an address the gateway can *derive* from the recipient it was
given: through the static address book, or through the reversible rewrite rule of S. Anything
this module cannot prove is refused (``RecipientRefused`` / ``SenderRefused``, both ``550 5.7.1``).
Pure: no I/O, no clock, no logging; the transports call it at ``MAIL`` and ``RCPT``.

Addresses are normalised by the one address rule, ``gateway.config.addresses`` (the
configuration judges them with the same functions): strict, lower-cased, IDN labels as
canonical A-labels, look-alikes refused.

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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from gateway import errors
from gateway.config.addresses import (
    MAX_ADDRESS,
    AddressError,
    DomainSet,
    address,
    domain,
    domain_matches,
    domain_pattern,
    normalise_address,
)
from gateway.config.settings import NETWORK_NAMES as NETWORKS
from gateway.config.settings import other

if TYPE_CHECKING:  # only for the type of routing_from_config's argument
    from gateway.config import Config

__all__ = [
    "NETWORKS", "REWRITE_SEPARATOR", "NetworkRoutes", "RoutingTable", "booked_counterpart",
    "build_table", "check_sender", "domain_matches", "normalise_address", "other",
    "reverse_checked", "reverse_sender", "route_recipient", "routing_from_config",
]

REWRITE_SEPARATOR = "="


@dataclass(frozen=True)
class NetworkRoutes:
    """What the routing knows of one network: its domains and the gateway's alias domain."""

    domains: tuple[str, ...]
    rewrite_domain: str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "domains", tuple(domain_pattern(d) for d in self.domains))
        except AddressError as exc:
            raise ValueError(f"bad domain pattern: {exc}") from None
        object.__setattr__(self, "_index", DomainSet(self.domains))
        if self.rewrite_domain is not None:
            try:
                object.__setattr__(self, "rewrite_domain", domain(self.rewrite_domain))
            except AddressError as exc:
                raise ValueError(f"bad rewrite domain: {exc}") from None

    def owns(self, address: str) -> bool:
        """Is the (normalised) address inside this network's domains?"""
        index: DomainSet = self._index  # type: ignore[attr-defined]
        return index.owns(address)

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
                pair = (address(apicrypt), address(mssante))
            except AddressError as exc:
                raise ValueError(f"bad address book entry: {exc}") from None
            pairs.append(pair)
            for name, booked in zip(NETWORKS, pair, strict=True):
                if booked in index[name]:
                    raise ValueError("duplicate address in the address book")
                index[name][booked] = pair
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
    networks: dict[str, NetworkRoutes] = {}
    for name in NETWORKS:
        net = config.network(name)
        networks[name] = NetworkRoutes(net.domains,
                                       net.rewrite.domain if net.rewrite else None)
    return RoutingTable(networks=networks,
                        address_book=tuple((p.apicrypt, p.mssante) for p in config.address_book))


def _pair_side(pair: tuple[str, str], network: str) -> str:
    return pair[NETWORKS.index(network)]


def booked_counterpart(table: RoutingTable, source: str, address: str) -> str | None:
    """The other network's side of the address book pair of ``address`` (normalised), if any."""
    pair = table.pair_for(source, address)
    return None if pair is None else _pair_side(pair, other(source))


def route_recipient(table: RoutingTable, source: str, rcpt: str,
                    directory: Callable[[str], str | None] | None = None) -> str:
    """The destination address (on the other network) of recipient ``rcpt`` of a message
    entering from ``source``; ``RecipientRefused`` if the gateway cannot route it.

    In order: the address book, the rewrite rule (``local=domain@`` on the alias domain),
    then ``directory`` (the destination's LDAP "address of alias"), whose answer passes the
    same checks as the others'.
    """
    destination = other(source)
    rcpt_address = normalise_address(rcpt)
    src, dst = table.networks[source], table.networks[destination]
    pair = table.pair_for(source, rcpt_address)
    target: str | None = None
    rewritten = (src.is_alias(rcpt_address)
                 and REWRITE_SEPARATOR in rcpt_address.partition("@")[0])
    if pair is not None:
        target = _pair_side(pair, destination)
    elif (not rewritten and directory is not None and src.owns(rcpt_address)
          and (found := directory(rcpt_address))):
        # an alias lives on the network it is written from, as an address book's does
        target = found
    elif src.is_alias(rcpt_address):
        encoded = rcpt_address.partition("@")[0]
        local, sep, domain = encoded.rpartition(REWRITE_SEPARATOR)
        if not sep or not local:
            raise errors.RecipientRefused("alias without an encoded destination")
        try:
            target = address(f"{local}@{domain}")
        except AddressError as exc:
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
        raise errors.SenderRefused("null sender", reply=errors.NULL_SENDER_REFUSED)
    sender = normalise_address(mail_from, sender=True)
    src = table.networks[source]
    if not src.owns(sender):
        raise errors.SenderRefused("sender is not on the source network")
    if src.is_alias(sender):
        raise errors.SenderRefused("sender is one of the gateway's own aliases")
    return sender


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
                                   reply=errors.SENDER_NOT_REVERSIBLE)
    local, _, domain = address.partition("@")
    alias = f"{local}{REWRITE_SEPARATOR}{domain}@{dst.rewrite_domain}"
    if len(alias) > MAX_ADDRESS:
        raise errors.SenderRefused("rewritten sender address too long",
                                   reply=errors.SENDER_NOT_REVERSIBLE)
    return alias
