"""The recipients' certificates from a real OpenLDAP directory (tests/slapd.py: Debian's
slapd, StartTLS with the test PKI), through the whole relay.

The mssante network's `directory` folder is empty: Marie's certificate is only in LDAP
(`mail` + `userCertificate;binary`). A message to her is relayed and opens with her key; the
directory going away answers 451 4.4.3 (the sender retries), then relays again once it is
back; a certificate replaced in LDAP is used once the cache's time is up; an address with a
filter metacharacter cannot widen the search.
"""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.app import Gateway
from gateway.config import load_config
from gateway.config.settings import LdapConfig
from gateway.devpki import init_pki
from gateway.smime.certgen import Issued, make_leaf
from gateway.smime.ldap_directory import LdapDirectory, _escape
from gateway.translate.context import build_runtime
from tests import slapd
from tests.messages import Pki, open_as_recipient, text_entity, text_of, user_message
from tests.ports import port_map
from tests.sinks import Sink, start_tls_sink

JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"

pytestmark = pytest.mark.skipif(not slapd.available(), reason="slapd missing")


@dataclasses.dataclass
class World:
    pki: Pki
    ports: dict[str, int]
    ldap: slapd.Slapd
    sink: Sink
    gateway: Gateway


def _der(pki: Pki, address: str) -> bytes:
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(pki.user_cert(address).read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ports = port_map("a_in", "a_out", "m_in", "m_out", "ldap")
    root = tmp_path / "pki"
    init_pki(root, apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    pki = Pki(root)
    server = slapd.Slapd(ports["ldap"], root / "mssante" / "next-hop-tls.pem",
                         root / "mssante" / "next-hop-tls.key", pki.ca_file("mssante"))
    server.start()
    server.add(slapd.base_entries())
    server.add(slapd.person("marie.curie", MARIE, [_der(pki, MARIE)]))
    (root / "mssante" / "empty").mkdir()
    text = (root / "gateway.toml").read_text()
    text = text.replace('directory = "mssante/users"', 'directory = "mssante/empty"')
    text += (f'\n[networks.mssante.ldap]\nurl = "{server.url}"\nbase_dn = "{slapd.SUFFIX}"\n'
             f'ca_file = "{pki.ca_file("mssante")}"\ncache_seconds = 0.5\n'
             "negative_cache_seconds = 0.5\ntimeout_seconds = 3\n")
    (root / "gateway.toml").write_text(text)
    config = load_config(root / "gateway.toml")
    gateway = Gateway(config, build_runtime(config))
    await gateway.start()
    sink = Sink()
    hop = await start_tls_sink(sink, root, "mssante", ports["m_out"])
    try:
        yield World(pki, ports, server, sink, gateway)
    finally:
        await gateway.stop_accepting()
        await gateway.close_delivery()
        gateway.close()
        hop.close()
        server.remove()


def _send(world: World, text: str) -> tuple[int, bytes]:
    raw = user_message(world.pki, JEAN, MARIE_ON_APICRYPT, text_entity(text))
    ctx = ssl.create_default_context(cafile=str(world.pki.ca_file("apicrypt")))
    ctx.check_hostname = False
    with smtplib.SMTP("127.0.0.1", world.ports["a_in"], timeout=30) as client:
        client.starttls(context=ctx)
        client.ehlo("client.test")
        client.mail(JEAN)
        code, said = client.rcpt(MARIE_ON_APICRYPT)
        if code != 250:
            return code, said
        return client.data(raw)


async def test_a_recipient_certificate_found_in_ldap(world: World) -> None:
    code, _ = await asyncio.to_thread(_send, world, "INR 2,1\n")
    assert code == 250
    [relayed] = world.sink.contents
    assert b"INR 2,1" in open_as_recipient(world.pki, MARIE, relayed).content


async def test_the_directory_going_away_is_451_then_recovery(world: World) -> None:
    assert (await asyncio.to_thread(_send, world, "un\n"))[0] == 250
    world.ldap.stop()
    await asyncio.sleep(0.6)  # past cache_seconds: the directory must be asked again
    code, said = await asyncio.to_thread(_send, world, "deux\n")
    assert (code, said.split()[0]) == (451, b"4.4.3"), said
    assert len(world.sink.received) == 1  # nothing relayed without a certificate check
    world.ldap.start()
    code, _ = await asyncio.to_thread(_send, world, "trois\n")
    assert code == 250 and len(world.sink.received) == 2


async def test_a_certificate_replaced_in_ldap_is_used_after_the_cache_time(
        world: World, tmp_path: Path) -> None:
    assert (await asyncio.to_thread(_send, world, "avant\n"))[0] == 250
    from cryptography import x509
    inter = Issued(
        x509.load_pem_x509_certificate((world.pki.root / "mssante/intermediate.pem")
                                       .read_bytes()),
        serialization.load_pem_private_key(
            (world.pki.root / "mssante/intermediate.key").read_bytes(), None))  # type: ignore[arg-type]
    renewed = make_leaf(inter, "Marie Curie", emails=[MARIE])
    world.ldap.modify(slapd.replace_certificate(
        "marie.curie", renewed.certificate.public_bytes(serialization.Encoding.DER)))
    await asyncio.sleep(0.6)
    assert (await asyncio.to_thread(_send, world, "apres\n"))[0] == 250
    # the new key opens the second message, not the first
    world.pki.user_cert(MARIE).write_bytes(
        renewed.certificate.public_bytes(serialization.Encoding.PEM))
    world.pki.user_key(MARIE).write_bytes(renewed.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    assert b"apres" in open_as_recipient(world.pki, MARIE, world.sink.contents[1]).content
    with pytest.raises(RuntimeError):
        open_as_recipient(world.pki, MARIE, world.sink.contents[0])


async def test_an_address_cannot_widen_the_search(world: World) -> None:
    """RFC 4515 escaping: "*" and parentheses in an address are data, not filter syntax."""
    assert _escape("a*)(mail=*") == "a\\2a\\29\\28mail=\\2a"
    directory = LdapDirectory(LdapConfig(
        url=world.ldap.url, base_dn=slapd.SUFFIX, ca_file=world.pki.ca_file("mssante")))
    try:
        await directory.prefetch(["*@hopital-test.mssante.fr", MARIE])
        assert directory.lookup("*@hopital-test.mssante.fr") == []
        assert len(directory.lookup(MARIE)) == 1
        assert directory.queries == 2
        await directory.prefetch([MARIE])  # cached: no new round trip
        assert directory.queries == 2
    finally:
        directory.close()


async def test_an_entry_holding_someone_elses_certificate_gives_none(world: World) -> None:
    """The secretariat's entry carries Marie's certificate (a copy error, or an attack on the
    directory): the gateway must not encrypt the secretariat's mail for Marie."""
    secretariat = "secretariat.cardio@chu-test.mssante.fr"
    world.ldap.add(slapd.person("secretariat", secretariat, [_der(world.pki, MARIE)]))
    directory = LdapDirectory(LdapConfig(
        url=world.ldap.url, base_dn=slapd.SUFFIX, ca_file=world.pki.ca_file("mssante")))
    try:
        await directory.prefetch([secretariat, MARIE])
        assert directory.lookup(secretariat) == []
        assert len(directory.lookup(MARIE)) == 1
    finally:
        directory.close()


def test_seventy_thousand_entries_loaded_with_slapadd(tmp_path: Path) -> None:
    """The national scale: 70,000 users with certificates, loaded as an operator loads a big
    directory (slapadd, offline), then asked for a sample of them: each found, each with one
    query."""
    import base64
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from gateway.smime.certgen import make_ca

    users = 70_000
    root = tmp_path / "pki"
    init_pki(root)
    server = slapd.Slapd(port_map("ldap")["ldap"], root / "mssante" / "next-hop-tls.pem",
                         root / "mssante" / "next-hop-tls.key", Pki(root).ca_file("mssante"))
    ca = make_ca("Scale CA", key_kind="p256")
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    now = dt.datetime.now(dt.UTC)
    ldif = tmp_path / "users.ldif"
    with ldif.open("w") as out:
        out.write(slapd.base_entries() + "\n")
        for i in range(users):
            mail = f"u{i:05d}@etab{i % 700}.mssante.fr"
            der = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"U{i}")]))
                   .issuer_name(ca.certificate.subject).public_key(key).serial_number(i + 1)
                   .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
                   .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(mail)]),
                                  critical=False)
                   .sign(ca.key, hashes.SHA256())
                   .public_bytes(serialization.Encoding.DER))
            out.write(f"dn: uid=u{i},ou=people,{slapd.SUFFIX}\nobjectClass: inetOrgPerson\n"
                      f"uid: u{i}\ncn: u{i}\nsn: u{i}\nmail: {mail}\n"
                      f"userCertificate;binary:: {base64.b64encode(der).decode()}\n\n")
    try:
        import subprocess
        loaded = subprocess.run(["slapadd", "-q", "-f", str(server.conf), "-l", str(ldif)],
                                capture_output=True, text=True, timeout=300, check=False)
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        server.start()
        directory = LdapDirectory(LdapConfig(
            url=server.url, base_dn=slapd.SUFFIX, ca_file=Pki(root).ca_file("mssante")))
        sample = [f"u{i:05d}@etab{i % 700}.mssante.fr" for i in range(0, users, 1_400)]
        try:
            asyncio.run(directory.prefetch([*sample, "absent@etab1.mssante.fr"]))
            assert all(len(directory.lookup(a)) == 1 for a in sample)
            assert directory.lookup("absent@etab1.mssante.fr") == []
            assert directory.queries == len(sample) + 1
        finally:
            directory.close()
    finally:
        server.remove()


async def test_an_alias_found_in_the_destinations_directory_routes(tmp_path: Path) -> None:
    """No [[address_book]] entry: Jean's entry in the apicrypt directory carries his alias on
    mssante among its `mail` values (alias_filter), and Marie's mail to that alias reaches
    Jean; an alias the directory does not know is refused at RCPT."""
    ports = port_map("a_in", "a_out", "m_in", "m_out", "ldap")
    root = tmp_path / "pki"
    init_pki(root, apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    pki = Pki(root)
    alias = "jean.dupont.annuaire@passerelle.mssante.fr"
    server = slapd.Slapd(ports["ldap"], root / "apicrypt" / "next-hop-tls.pem",
                         root / "apicrypt" / "next-hop-tls.key", pki.ca_file("apicrypt"))
    server.start()
    server.add(slapd.base_entries())
    server.add(slapd.person("jean.dupont", JEAN, [_der(pki, JEAN)]) + f"mail: {alias}\n")
    text = (root / "gateway.toml").read_text()
    text += (f'\n[networks.apicrypt.ldap]\nurl = "{server.url}"\nbase_dn = "{slapd.SUFFIX}"\n'
             f'ca_file = "{pki.ca_file("apicrypt")}"\nalias_filter = "(mail={{address}})"\n')
    (root / "gateway.toml").write_text(text)
    config = load_config(root / "gateway.toml")
    gateway = Gateway(config, build_runtime(config))
    await gateway.start()
    sink = Sink()
    hop = await start_tls_sink(sink, root, "apicrypt", ports["a_out"])

    def send(rcpt: str) -> tuple[int, bytes]:
        raw = user_message(pki, MARIE, rcpt, text_entity("Bien reçu\n"))
        ctx = ssl.create_default_context(cafile=str(pki.ca_file("mssante")))
        ctx.check_hostname = False
        with smtplib.SMTP("127.0.0.1", ports["m_in"], timeout=30) as client:
            client.starttls(context=ctx)
            client.ehlo("client.test")
            client.mail(MARIE)
            code, said = client.rcpt(rcpt)
            if code != 250:
                return code, said
            return client.data(raw)

    try:
        code, said = await asyncio.to_thread(send, alias)
        assert code == 250, said
        [(rcpts, relayed)] = sink.received
        assert rcpts == [JEAN]
        assert "Bien reçu" in text_of(open_as_recipient(pki, JEAN, relayed).content)
        code, _ = await asyncio.to_thread(send, "inconnu.annuaire@passerelle.mssante.fr")
        assert code == 550
    finally:
        await gateway.stop_accepting()
        await gateway.close_delivery()
        gateway.close()
        hop.close()
        server.remove()
