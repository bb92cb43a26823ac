"""Envelope policy: no open relay, reversible addresses, strict normalisation."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway import errors
from gateway.translate import routing
from gateway.translate.routing import (
    check_sender,
    normalise_address,
    reverse_sender,
    route_recipient,
)

A_REAL = "jean.dupont@medical59.apicrypt.org"
A_ALIAS = "jean.dupont@apicrypt.passerelle.example.org"  # on mssante, stands for A_REAL
M_REAL = "marie.curie@hopital-test.mssante.fr"


@pytest.fixture(scope="module")
def table() -> routing.RoutingTable:
    return routing.build_table(
        {"apicrypt": ["*.apicrypt.org"],
         "mssante": ["*.mssante.fr", "apicrypt.passerelle.example.org"]},
        {"apicrypt": "passerelle.apicrypt.org", "mssante": "apicrypt.passerelle.example.org"},
        [(A_REAL, A_ALIAS)],
    )


@pytest.fixture(scope="module")
def book_only() -> routing.RoutingTable:
    return routing.build_table(
        {"apicrypt": ["medical59.apicrypt.org"], "mssante": ["hopital-test.mssante.fr"]},
        None,
        [("p.durand@medical59.apicrypt.org", "p.durand@hopital-test.mssante.fr")],
    )


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("Jean.Dupont@Medical59.APICRYPT.org", A_REAL),
    ("<jean.dupont@medical59.apicrypt.org>", A_REAL),
    ("o'brien+tag@example.org", "o'brien+tag@example.org"),
    ("user@bücher.example", "user@xn--bcher-kva.example"),
    ("user@XN--BCHER-KVA.example", "user@xn--bcher-kva.example"),
])
def test_normalise_accepts(raw: str, expected: str) -> None:
    assert normalise_address(raw) == expected


@pytest.mark.parametrize("raw", [
    "", "<>", "<<a@example.org>>", "@relay.example,@b.example:user@example.org",
    "@relay.example:user@example.org", "user%victim.example@example.org",
    "victim.example!user@example.org", '"user@victim.example"@example.org',
    '"user"@example.org', "a@b@example.org", "user@example.org.", "user@[127.0.0.1]",
    "user@[IPv6:::1]", "user@", "@example.org", "user", "us er@example.org",
    "user@exa mple.org", "user\r\n@example.org", "user@example.org\r\nRCPT TO:<x@y.org>",
    "user\x00@example.org", "usér@example.org", "user@ex..ample.org", ".user@example.org",
    "user.@example.org", "us..er@example.org", "user@-example.org", "user@example.123",
    "user@localhost", "user@ｅｘａｍｐｌｅ.org", "user@straße.de", "user@xn--zz.example",
    "user(comment)@example.org", "user@example.org (comment)", "a" * 250 + "@example.org",
    "user@" + "a" * 64 + ".org", "user\t@example.org", "user@example.org>", "<user@example.org",
])
def test_normalise_refuses(raw: str) -> None:
    with pytest.raises(errors.RecipientRefused) as info:
        normalise_address(raw)
    assert info.value.reply.permanent
    with pytest.raises(errors.SenderRefused):
        normalise_address(raw, sender=True)


def test_refusal_reasons_carry_no_address() -> None:
    with pytest.raises(errors.RecipientRefused) as info:
        normalise_address("secret.person%victim@example.org")
    assert "secret" not in str(info.value) and "victim" not in str(info.value)


# --- recipients ------------------------------------------------------------------------------


def test_book_alias_routes_to_real_mailbox(table: routing.RoutingTable) -> None:
    assert route_recipient(table, "mssante", "<Jean.Dupont@APICRYPT.passerelle.example.org>") \
        == A_REAL


def test_rewrite_rule_routes_to_encoded_address(table: routing.RoutingTable) -> None:
    rcpt = "marie.curie=hopital-test.mssante.fr@passerelle.apicrypt.org"
    assert route_recipient(table, "apicrypt", rcpt) == M_REAL
    # Reversible: the alias of the mssante sender is exactly the address that routes back.
    assert reverse_sender(table, "mssante", M_REAL) == rcpt


@pytest.mark.parametrize(("source", "rcpt"), [
    ("apicrypt", A_REAL),  # an apicrypt user, through the apicrypt listener: not for us
    ("apicrypt", "someone@medical59.apicrypt.org"),
    ("apicrypt", M_REAL),  # a direct address on the other network: no relaying
    ("mssante", M_REAL),
    ("mssante", A_REAL),
    ("apicrypt", "unknown@example.com"),
    ("apicrypt", "marie.curie@passerelle.apicrypt.org"),  # alias without encoded domain
    ("apicrypt", "=hopital-test.mssante.fr@passerelle.apicrypt.org"),
    ("apicrypt", "marie=example.com@passerelle.apicrypt.org"),  # not on mssante
    ("apicrypt", "marie=medical59.apicrypt.org@passerelle.apicrypt.org"),  # back home
    # onto the gateway's own alias domain on the other side: loops are cut
    ("apicrypt", "jean.dupont=apicrypt.passerelle.example.org@passerelle.apicrypt.org"),
    ("mssante", "x=passerelle.apicrypt.org@apicrypt.passerelle.example.org"),
    ("apicrypt", "marie%hopital-test.mssante.fr@passerelle.apicrypt.org"),
    ("apicrypt", "marie=hopital-test.mssante.fr.@passerelle.apicrypt.org"),
    ("apicrypt", "marie=[127.0.0.1]@passerelle.apicrypt.org"),
    ("apicrypt", "marie=hôpital-test.mssante.fr@passerelle.apicrypt.org"),
    ("apicrypt", "user@passerelle.apicrypt.org."),
    ("apicrypt", "@passerelle.apicrypt.org:marie=hopital-test.mssante.fr@x.apicrypt.org"),
])
def test_recipient_refused(table: routing.RoutingTable, source: str, rcpt: str) -> None:
    with pytest.raises(errors.RecipientRefused) as info:
        route_recipient(table, source, rcpt)
    assert info.value.reply.code in (550, 553)


def test_idn_homograph_is_not_a_configured_domain(table: routing.RoutingTable) -> None:
    # Cyrillic "а" in "hаpital": a valid IDN, but another domain than the configured one.
    spoof = "marie=hоpital-test.mssante.fr@passerelle.apicrypt.org"
    with pytest.raises(errors.RecipientRefused):
        route_recipient(table, "apicrypt", spoof)
    lookalike = "jean.dupont@apicrypt.passerelle.exаmple.org"
    with pytest.raises(errors.RecipientRefused):
        route_recipient(table, "mssante", lookalike)


def test_unknown_network_is_an_internal_error(table: routing.RoutingTable) -> None:
    with pytest.raises(errors.InternalError):
        route_recipient(table, "smtp", A_ALIAS)


def test_book_without_rewrite_domains_is_symmetric(book_only: routing.RoutingTable) -> None:
    assert route_recipient(book_only, "mssante", "p.durand@hopital-test.mssante.fr") \
        == "p.durand@medical59.apicrypt.org"
    assert route_recipient(book_only, "apicrypt", "p.durand@medical59.apicrypt.org") \
        == "p.durand@hopital-test.mssante.fr"
    with pytest.raises(errors.RecipientRefused):
        route_recipient(book_only, "apicrypt", "x=hopital-test.mssante.fr@medical59.apicrypt.org")


# --- senders ---------------------------------------------------------------------------------


def test_sender_checks(table: routing.RoutingTable) -> None:
    assert check_sender(table, "apicrypt", "<Jean.Dupont@Medical59.Apicrypt.org>") == A_REAL
    assert check_sender(table, "mssante", M_REAL) == M_REAL
    for source, sender in [("mssante", A_REAL), ("apicrypt", M_REAL),
                           ("apicrypt", "x=hopital-test.mssante.fr@passerelle.apicrypt.org"),
                           ("mssante", A_ALIAS), ("apicrypt", "user@example.com")]:
        with pytest.raises(errors.SenderRefused) as info:
            check_sender(table, source, sender)
        assert info.value.reply == errors.SENDER_NOT_ALLOWED


@pytest.mark.parametrize("null", ["", "<>"])
def test_null_sender_refused(table: routing.RoutingTable, null: str) -> None:
    with pytest.raises(errors.SenderRefused) as info:
        check_sender(table, "mssante", null)
    assert info.value.reply == errors.NULL_SENDER_REFUSED


def test_malformed_sender_is_553(table: routing.RoutingTable) -> None:
    with pytest.raises(errors.SenderRefused) as info:
        check_sender(table, "apicrypt", "jean%x@medical59.apicrypt.org")
    assert info.value.reply == errors.MALFORMED_SENDER


def test_reverse_sender(table: routing.RoutingTable, book_only: routing.RoutingTable) -> None:
    assert reverse_sender(table, "apicrypt", A_REAL) == A_ALIAS
    alias = reverse_sender(table, "apicrypt", "paul@medical59.apicrypt.org")
    assert alias == "paul=medical59.apicrypt.org@apicrypt.passerelle.example.org"
    # ... and a reply to that alias routes back to the sender.
    assert route_recipient(table, "mssante", alias) == "paul@medical59.apicrypt.org"
    with pytest.raises(errors.SenderRefused) as info:
        reverse_sender(book_only, "apicrypt", "stranger@medical59.apicrypt.org")
    assert info.value.reply == errors.SENDER_NOT_REVERSIBLE
    long_local = "x" * 60 + "@" + "a" * 60 + "." + "b" * 60 + ".c" * 30 + ".apicrypt.org"
    with pytest.raises(errors.SenderRefused):
        reverse_sender(table, "apicrypt", long_local)


def test_table_refuses_bad_configuration() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        routing.build_table({"apicrypt": ["a.org"], "mssante": ["m.org"]}, None,
                            [("x@a.org", "x@m.org"), ("X@A.org", "y@m.org")])
    with pytest.raises(ValueError):
        routing.RoutingTable(networks={"apicrypt": routing.NetworkRoutes(("a.org",))})
    with pytest.raises(ValueError):
        routing.build_table({"apicrypt": ["*.*.org"], "mssante": ["m.org"]}, None)


# --- properties ------------------------------------------------------------------------------

_PIECES = [*'aeJm.=@-_%!"<>[]:, \r\n\x00é', "а", "о", "jean.dupont", "marie.curie",
           "hopital-test.mssante.fr", "passerelle.apicrypt.org",
           "apicrypt.passerelle.example.org", "medical59.apicrypt.org", "xn--", "@@"]
_ADDRESSY = st.lists(st.sampled_from(_PIECES), max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@example(source="apicrypt", rcpt="marie.curie=hopital-test.mssante.fr@passerelle.apicrypt.org")
@example(source="mssante", rcpt="jean.dupont@apicrypt.passerelle.example.org")
@given(source=st.sampled_from(routing.NETWORKS),
       rcpt=st.one_of(st.text(max_size=80), _ADDRESSY))
def test_route_recipient_never_escapes(table: routing.RoutingTable, source: str,
                                       rcpt: str) -> None:
    destination = routing.other(source)
    try:
        target = route_recipient(table, source, rcpt)
    except errors.GatewayError as exc:
        assert exc.reply.permanent
        return
    dst = table.networks[destination]
    assert dst.owns(target)
    assert not dst.is_alias(target)
    assert not table.networks[source].owns(target)
    assert normalise_address(target) == target


@settings(max_examples=300, deadline=None)
@given(local=st.from_regex(r"[a-z0-9][a-z0-9._+'-]{0,20}[a-z0-9]", fullmatch=True),
       host=st.from_regex(r"[a-z][a-z0-9-]{0,15}[a-z0-9]", fullmatch=True))
def test_rewrite_round_trip(table: routing.RoutingTable, local: str, host: str) -> None:
    if ".." in local:
        return
    sender = f"{local}@{host}.mssante.fr"
    alias = reverse_sender(table, "mssante", sender)
    assert route_recipient(table, "apicrypt", alias) == sender
