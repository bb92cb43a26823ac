"""The loaded runtime: configuration turned into identities, trust stores, directories, routes.

Rule kept here: this is the only place that reads the certificate and key files named by the
configuration for the message path; everything below it receives loaded objects. A reload
builds a whole new ``Runtime`` and swaps it in one assignment, so a message never sees half of
an old and half of a new configuration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway import errors
from gateway.config import (
    NETWORK_NAMES,
    Config,
    NetworkConfig,
    load_identity,
    other,
    read_certificates,
    read_crls,
)
from gateway.config.addresses import lookup_key
from gateway.smime.directory import FolderDirectory
from gateway.smime.ldap_directory import LdapDirectory
from gateway.smime.model import Identity
from gateway.smime.trust import TrustStore
from gateway.translate import routing
from gateway.translate.names import KnownNames, certificate_names
from gateway.translate.pipeline import NetworkRuntime
from gateway.translate.routing import RoutingTable, routing_from_config

NETWORKS = NETWORK_NAMES


@dataclass(frozen=True)
class Runtime:
    networks: dict[str, NetworkRuntime]
    routing: RoutingTable
    names: KnownNames = field(default_factory=KnownNames)  # address-book persons' names

    def network(self, name: str) -> NetworkRuntime:
        return self.networks[name]

    def check_sender(self, source: str, address: str, *, strict: bool = True) -> str:
        """``routing.check_sender``, and one rule the routes alone cannot see: an address book
        entry whose other side is a user of the other network (a certificate in its directory)
        makes ``address`` the gateway's alias of that user. Whoever holds a certificate for the
        alias must not send as that user (``SenderRefused``, 550 5.7.1).

        ``strict=False`` (at MAIL): a directory that must be asked first (LDAP) is not, and
        the rule is judged again, strictly, once it has been (before the translation)."""
        sender = routing.check_sender(self.routing, source, address)
        counterpart = routing.booked_counterpart(self.routing, source, sender)
        if counterpart is None:
            return sender
        try:
            found = self.networks[other(source)].directory.lookup(counterpart)
        except errors.DirectoryUnavailable:
            if strict:
                raise
            found = []
        if found:
            raise errors.SenderRefused("sender is the gateway's alias of a user of the other"
                                       " network")
        return sender

    def route_recipient(self, source: str, address: str) -> str:
        """``routing.route_recipient`` with the destination directory's aliases (LDAP's
        "address of alias", once ``prefetch_recipient`` asked for it)."""
        directory = self.networks[other(source)].directory
        return routing.route_recipient(self.routing, source, address,
                                       getattr(directory, "resolve_alias", None))

    async def prefetch_recipient(self, source: str, address: str) -> None:
        """Ask the destination's directory about an alias the address book and the rewrite
        rule do not route (nothing to ask otherwise). ``DirectoryUnavailable`` if it cannot
        answer."""
        directory = self.networks[other(source)].directory
        fetch = getattr(directory, "prefetch_aliases", None)
        if fetch is None:
            return
        try:
            routing.route_recipient(self.routing, source, address)
            return  # routed without the directory
        except errors.GatewayError:
            pass
        try:
            normalised = routing.normalise_address(address)
        except errors.GatewayError:
            return  # refused anyway, by route_recipient
        await fetch([normalised])

    async def prefetch(self, source: str, mail_from: str, recipients: Sequence[str]) -> None:
        """Ask the destination's directory (when it must be asked: LDAP) about everything the
        translation will look up: the recipients and the sender's booked counterpart."""
        directory = self.networks[other(source)].directory
        fetch = getattr(directory, "prefetch", None)
        if fetch is None:
            return
        wanted = list(recipients)
        with contextlib.suppress(errors.GatewayError):
            sender = routing.check_sender(self.routing, source, mail_from)
            counterpart = routing.booked_counterpart(self.routing, source, sender)
            if counterpart is not None:
                wanted.append(counterpart)
        await fetch(wanted)

    def reverse_sender(self, source: str, address: str) -> str:
        """The sender's address on the other network (``routing.reverse_sender``), once
        ``check_sender`` allows it."""
        return routing.reverse_checked(self.routing, source, self.check_sender(source, address))


def _network_runtime(net: NetworkConfig) -> NetworkRuntime:
    anchors = tuple(c for path in net.trust_anchors for c in read_certificates(path))
    intermediates = tuple(c for path in net.intermediates for c in read_certificates(path))
    crls = tuple(read_crls(net.crls))
    pair = load_identity(net)
    identity = Identity(certificate=pair.certificate, private_key=pair.private_key)
    # Send the intermediates that issued our own certificate along with our signatures.
    chain = tuple(c for c in intermediates if c.subject == identity.certificate.issuer)
    return NetworkRuntime(
        name=net.name,
        identity=identity,
        store=TrustStore(anchors=anchors, intermediates=intermediates, crls=crls,
                         crl_fail_closed=net.crl_policy == "fail-closed"),
        directory=LdapDirectory(net.ldap) if net.ldap is not None
        else FolderDirectory(net.directory),
        identity_chain=chain,
        charset=net.charset,
        utf8_recipients=frozenset(a.lower() for a in net.utf8_recipients),
        write_gcm=net.encrypt_gcm,
        accept_cbc=net.accept_cbc,
        documents=net.documents,
    )


def _known_names(config: Config, networks: dict[str, NetworkRuntime]) -> KnownNames:
    """Each address-book person's names (the entry's ``name``, the common names of their
    certificates in either directory) with both of their addresses."""
    people = []
    for pair in config.address_book:
        names = [pair.name] if pair.name else []
        for name in NETWORKS:
            with contextlib.suppress(errors.GatewayError):
                for cert in networks[name].directory.lookup(pair.on(name)):
                    names += certificate_names(cert)
        people.append((names, frozenset({lookup_key(pair.apicrypt), lookup_key(pair.mssante)})))
    return KnownNames(people)


def build_runtime(config: Config) -> Runtime:
    networks: dict[str, NetworkRuntime] = {
        name: _network_runtime(config.network(name)) for name in NETWORKS}
    return Runtime(
        networks=networks,
        routing=routing_from_config(config),
        names=_known_names(config, networks),
    )
