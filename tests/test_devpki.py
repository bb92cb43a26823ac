"""The development PKI: layout, modes, chains, CRLs, TLS usability, no overwriting."""

from __future__ import annotations

import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config import load_config, load_identity
from gateway.devpki import (
    GATEWAY_ADDRESSES,
    REVOKED,
    USERS,
    alias_of,
    init_pki,
    pki_summary,
    user_identity,
)
from gateway.smime.directory import email_addresses


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_pki(tmp_path_factory.mktemp("devpki") / "dev", hostname="gw.example.test",
                    apicrypt_port=12525, apicrypt_relay_port=12526, mssante_port=12587,
                    mssante_relay_port=12588)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())


def test_layout(pki: Path) -> None:
    root = pki.parent
    assert pki == root / "gateway.toml"
    expected = {
        "pseudonym.key",
        "apicrypt/ca.pem", "apicrypt/ca.key", "apicrypt/crl.pem", "apicrypt/gateway.pem",
        "apicrypt/gateway.key", "apicrypt/tls.pem", "apicrypt/tls.key",
        "apicrypt/next-hop-tls.pem", "apicrypt/next-hop-tls.key",
        "mssante/ca.pem", "mssante/ca.key", "mssante/intermediate.pem",
        "mssante/intermediate.key", "mssante/crl.pem", "mssante/crl-root.pem",
        "mssante/client-ca.pem", "mssante/gateway.pem", "mssante/gateway.key",
        "mssante/tls.pem", "mssante/tls.key", "mssante/relay-client.pem",
        "mssante/relay-client.key", "mssante/peer-client.pem", "mssante/peer-client.key",
        "mssante/next-hop-tls.pem", "mssante/next-hop-tls.key",
    }
    for network, addresses in USERS.items():
        for address in addresses:
            expected |= {f"{network}/users/{address}.pem", f"{network}/users-keys/{address}.pem",
                         f"{network}/users-keys/{address}.key"}
    written = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert written == expected | {"gateway.toml"}
    # The directories hold certificates only.
    for network in USERS:
        for path in (root / network / "users").iterdir():
            assert b"PRIVATE" not in path.read_bytes()


def test_modes(pki: Path) -> None:
    root = pki.parent
    keys = [p for p in root.rglob("*") if p.suffix == ".key"]
    assert len(keys) == (4 + 3) + (7 + 3) + 1  # CAs and services, users, pseudonym key
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_config_loads_with_the_chosen_ports(pki: Path) -> None:
    config = load_config(pki)
    assert config.warnings == ()
    assert config.gateway.hostname == "gw.example.test"
    assert config.network("apicrypt").listen == "127.0.0.1:12525"
    assert config.network("apicrypt").relay == "127.0.0.1:12526"
    assert config.network("mssante").listen == "127.0.0.1:12587"
    assert config.network("mssante").relay == "127.0.0.1:12588"
    for name in ("apicrypt", "mssante"):
        identity = load_identity(config.network(name))
        assert email_addresses(identity.certificate) == {GATEWAY_ADDRESSES[name]}
        assert config.network(name).owns(GATEWAY_ADDRESSES[name])
    book = {(p.apicrypt, p.mssante) for p in config.address_book}
    for address in USERS["apicrypt"]:
        assert (address, alias_of(address, "apicrypt")) in book
    for address in USERS["mssante"]:
        assert (alias_of(address, "mssante"), address) in book
    assert ("marie.curie.mssante@passerelle.apicrypt.org",
            "marie.curie@hopital-test.mssante.fr") in book


def test_chains(pki: Path) -> None:
    api, mss = pki.parent / "apicrypt", pki.parent / "mssante"
    api_root, mss_root, inter = cert(api / "ca.pem"), cert(mss / "ca.pem"), \
        cert(mss / "intermediate.pem")
    api_root.verify_directly_issued_by(api_root)
    mss_root.verify_directly_issued_by(mss_root)
    inter.verify_directly_issued_by(mss_root)
    assert api_root.subject.rfc4514_string().startswith("CN=Apicrypt Dev Root CA")
    assert mss_root.subject.rfc4514_string().startswith("CN=IGC-Santé Dev Root")
    assert inter.subject.rfc4514_string().startswith("CN=IGC-Santé Dev Personnes")
    for address in USERS["apicrypt"]:
        cert(api / "users" / f"{address}.pem").verify_directly_issued_by(api_root)
    for address in USERS["mssante"]:
        user = cert(mss / "users" / f"{address}.pem")
        user.verify_directly_issued_by(inter)
        with pytest.raises(ValueError):  # issuer name differs
            user.verify_directly_issued_by(mss_root)
        assert email_addresses(user) == {address}
    for name in ("gateway.pem", "relay-client.pem", "peer-client.pem", "next-hop-tls.pem",
                 "tls.pem"):
        chain = certs(mss / name)
        assert len(chain) == (1 if name == "gateway.pem" else 2)
        chain[0].verify_directly_issued_by(inter)
        if len(chain) == 2:
            assert chain[1] == inter
    assert certs(mss / "client-ca.pem") == [mss_root, inter]


def test_revoked_serials_in_crls(pki: Path) -> None:
    for network, issuer_file, crl_file in (("apicrypt", "ca.pem", "crl.pem"),
                                           ("mssante", "intermediate.pem", "crl.pem")):
        folder = pki.parent / network
        issuer = cert(folder / issuer_file)
        revocations = crl(folder / crl_file)
        assert revocations.issuer == issuer.subject
        assert revocations.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        revoked = cert(folder / "users" / f"{REVOKED[network]}.pem")
        assert revocations.get_revoked_certificate_by_serial_number(
            revoked.serial_number) is not None
        assert len(revocations) == 1
        for address in USERS[network]:
            if address != REVOKED[network]:
                serial = cert(folder / "users" / f"{address}.pem").serial_number
                assert revocations.get_revoked_certificate_by_serial_number(serial) is None
    root_crl = crl(pki.parent / "mssante" / "crl-root.pem")
    assert len(root_crl) == 0
    assert root_crl.is_signature_valid(
        cert(pki.parent / "mssante" / "ca.pem").public_key())  # type: ignore[arg-type]


def _openssl_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", *args], capture_output=True, text=True,
                          check=False, timeout=30)


@pytest.mark.interop
def test_openssl_agrees_on_chains_and_revocation(pki: Path) -> None:
    mss = pki.parent / "mssante"
    good = _openssl_verify("-crl_check", "-CAfile", str(mss / "ca.pem"),
                           "-untrusted", str(mss / "intermediate.pem"),
                           "-CRLfile", str(mss / "crl.pem"), "-purpose", "smimesign",
                           str(mss / "users" / "marie.curie@hopital-test.mssante.fr.pem"))
    assert good.returncode == 0, good.stdout + good.stderr
    bad = _openssl_verify("-crl_check", "-CAfile", str(mss / "ca.pem"),
                          "-untrusted", str(mss / "intermediate.pem"),
                          "-CRLfile", str(mss / "crl.pem"),
                          str(mss / "users" / "revoque@hopital-test.mssante.fr.pem"))
    assert bad.returncode != 0 and "revoked" in (bad.stdout + bad.stderr)
    api = pki.parent / "apicrypt"
    for address in USERS["apicrypt"]:
        result = _openssl_verify("-crl_check", "-CAfile", str(api / "ca.pem"),
                                 "-CRLfile", str(api / "crl.pem"),
                                 str(api / "users" / f"{address}.pem"))
        assert (result.returncode == 0) == (address != REVOKED["apicrypt"]), result.stdout
    tls = _openssl_verify("-CAfile", str(mss / "ca.pem"), "-untrusted", str(mss / "tls.pem"),
                          "-purpose", "sslserver", "-verify_ip", "127.0.0.1", str(mss / "tls.pem"))
    assert tls.returncode == 0, tls.stdout + tls.stderr


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> None:
    """A full TLS handshake in memory (no sockets)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, end in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server learns of a refused client certificate on the first read.
            c.write(b"ping")
            s_in.write(c_out.read())
            assert s.read(4) == b"ping"
            return
    raise AssertionError("handshake did not finish")


def test_tls_certificates_work_with_python_ssl(pki: Path) -> None:
    for network in ("apicrypt", "mssante"):
        folder = pki.parent / network
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(folder / "tls.pem", folder / "tls.key")
        client = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        for name in ("127.0.0.1", "localhost", "gw.example.test"):
            _handshake(server, client, name)
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(server, client, "other.example.test")

    # Mutual TLS toward the mssante next hop: the gateway's relay client certificate.
    mss = pki.parent / "mssante"
    next_hop = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    next_hop.load_cert_chain(mss / "next-hop-tls.pem", mss / "next-hop-tls.key")
    next_hop.load_verify_locations(mss / "ca.pem")
    next_hop.verify_mode = ssl.CERT_REQUIRED
    relay = ssl.create_default_context(cafile=str(mss / "ca.pem"))
    relay.load_cert_chain(mss / "relay-client.pem", mss / "relay-client.key")
    _handshake(next_hop, relay, "127.0.0.1")
    anonymous = ssl.create_default_context(cafile=str(mss / "ca.pem"))
    with pytest.raises(ssl.SSLError):
        _handshake(next_hop, anonymous, "127.0.0.1")


def test_user_identities(pki: Path) -> None:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for addresses in USERS.values():
        for address in addresses:
            identity = user_identity(pki.parent, address)
            assert email_addresses(identity.certificate) == {address}
            assert identity.private_key.public_key().public_bytes(*fmt) == \
                identity.certificate.public_key().public_bytes(*fmt)
    with pytest.raises(KeyError):
        user_identity(pki.parent, "nobody@medical59.apicrypt.org")


def test_summary(pki: Path) -> None:
    text = pki_summary(pki.parent)
    for addresses in USERS.values():
        for address in addresses:
            assert address in text
    assert text.count("REVOKED") == 2
    assert "IGC-Santé Dev Personnes" in text and "Apicrypt Dev Root CA" in text
    assert "jean.dupont.apicrypt@passerelle.mssante.fr" in text
    assert "PRIVATE" not in text


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "pki"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        init_pki(target)
    assert sorted(p.name for p in target.iterdir()) == ["precious.txt"]

    first = init_pki(target, force=True)
    old_ca = cert(target / "apicrypt" / "ca.pem")
    with pytest.raises(FileExistsError):
        init_pki(target)
    assert cert(target / "apicrypt" / "ca.pem") == old_ca
    assert init_pki(target, force=True) == first
    assert cert(target / "apicrypt" / "ca.pem") != old_ca
    assert (target / "precious.txt").read_text() == "keep me"  # force touches only its files
    assert load_config(first).warnings == ()

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError):
        init_pki(a_file, force=True)


def test_empty_existing_directory_is_fine(tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir(mode=0o755)
    config = init_pki(target, require_client_cert=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert load_config(config).network("mssante").require_client_cert
