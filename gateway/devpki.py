"""A development PKI for both networks and a ready configuration (``gateway pki init DIR``).

Rule kept here: this is for development, tests and the demo only. Every key is generated fresh
(RSA-2048) and written with mode 0600 into folders with mode 0700; nothing is ever overwritten
unless asked (``force=True``), and nothing of this module runs on a message path.

Layout written under ``DIR`` (all paths in ``gateway.toml`` are relative to ``DIR``)::

    gateway.toml                  the configuration; ``load_config`` accepts it as is
    pseudonym.key                 key of the keyed hash that pseudonymises addresses in logs
    apicrypt/
      ca.pem, ca.key              "Apicrypt Dev Root CA": issues every apicrypt certificate
      crl.pem                     its CRL, listing the revoked user
      gateway.pem, gateway.key    the gateway's S/MIME identity (passerelle@passerelle.apicrypt.org)
      tls.pem, tls.key            the listener's TLS certificate (DNS hostname, localhost; IP
                                  127.0.0.1)
      next-hop-tls.pem, .key      for a stand-in of the network's mail server at the relay
                                  address (tests, demo): DNS localhost, IP 127.0.0.1
      users/<address>.pem         the users' certificates: the network's directory
      users-keys/<address>.key    the users' keys, and a copy of their certificate as
      users-keys/<address>.pem    <address>.pem, so that tests and the demo can act as them
    mssante/
      ca.pem, ca.key              "IGC-Santé Dev Root" (the trust anchor)
      intermediate.pem, .key      "IGC-Santé Dev Personnes", issued by the root; issues the rest
      crl.pem                     the intermediate's CRL, listing the revoked user
      crl-root.pem                the root's CRL (empty)
      client-ca.pem               root + intermediate: CAs of the client certificates accepted
                                  on the mssante listener
      gateway.pem, gateway.key    S/MIME identity (passerelle@passerelle.mssante.fr)
      tls.pem, tls.key            listener TLS (leaf then intermediate)
      relay-client.pem, .key      the gateway's client certificate toward the mssante next hop
      peer-client.pem, .key       a client certificate for an mssante operator (mutual TLS in)
      next-hop-tls.pem, .key      as for apicrypt, leaf then intermediate
      users/, users-keys/         as for apicrypt

Users: apicrypt ``jean.dupont@medical59.apicrypt.org``, ``labo.biolille@labo59.apicrypt.org`` and
the revoked ``revoque@medical59.apicrypt.org``; mssante ``marie.curie@hopital-test.mssante.fr``,
``secretariat.cardio@chu-test.mssante.fr`` and the revoked ``revoque@hopital-test.mssante.fr``.
Every user, revoked ones included, has an address-book entry: an apicrypt user ``local@domain``
is reachable from mssante as ``local.apicrypt@passerelle.mssante.fr``; an mssante user as
``local.mssante@passerelle.apicrypt.org`` from apicrypt (``alias_of``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import socket
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config import parse_certificates, parse_crls, parse_private_key
from gateway.smime.certgen import Issued, make_ca, make_crl, make_leaf, new_key
from gateway.smime.model import Identity

CONFIG_NAME = "gateway.toml"
NETWORKS = ("apicrypt", "mssante")
USERS: dict[str, tuple[str, ...]] = {
    "apicrypt": ("jean.dupont@medical59.apicrypt.org", "labo.biolille@labo59.apicrypt.org",
                 "revoque@medical59.apicrypt.org"),
    "mssante": ("marie.curie@hopital-test.mssante.fr", "secretariat.cardio@chu-test.mssante.fr",
                "revoque@hopital-test.mssante.fr"),
}
REVOKED: dict[str, str] = {
    "apicrypt": "revoque@medical59.apicrypt.org",
    "mssante": "revoque@hopital-test.mssante.fr",
}
DOMAINS: dict[str, tuple[str, ...]] = {"apicrypt": ("*.apicrypt.org",),
                                       "mssante": ("*.mssante.fr",)}
GATEWAY_DOMAIN: dict[str, str] = {"apicrypt": "passerelle.apicrypt.org",
                                  "mssante": "passerelle.mssante.fr"}
GATEWAY_ADDRESSES: dict[str, str] = {name: f"passerelle@{domain}"
                                     for name, domain in GATEWAY_DOMAIN.items()}
_NAMES = {
    "jean.dupont": "Jean Dupont", "labo.biolille": "Laboratoire Biolille",
    "marie.curie": "Marie Curie", "secretariat.cardio": "Secrétariat de cardiologie",
    "revoque": "Utilisateur Révoqué",
}


def alias_of(address: str, network: str) -> str:
    """The address on the *other* network under which a user of ``network`` is reachable."""
    local = address.rpartition("@")[0]
    other = "mssante" if network == "apicrypt" else "apicrypt"
    return f"{local}.{network}@{GATEWAY_DOMAIN[other]}"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports for a development set-up's listeners: every
    socket is held until all are chosen (a port closed and asked for again can come back, and
    two listeners given one port make the second fail to bind while the first answers)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


# --- writing ----------------------------------------------------------------------------------


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # an existing file keeps its old mode through O_CREAT
        os.write(fd, data)
    finally:
        os.close(fd)


def _pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _write_certs(path: Path, *certs: x509.Certificate) -> None:
    _write(path, _pem(certs), 0o644)


def _write_key(path: Path, issued: Issued) -> None:
    data = issued.key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    _write(path, data, 0o600)


def _write_pair(folder: Path, stem: str, issued: Issued,
                chain: Sequence[x509.Certificate] = ()) -> None:
    _write_certs(folder / f"{stem}.pem", issued.certificate, *chain)
    _write_key(folder / f"{stem}.key", issued)


def _tls_leaf(issuer: Issued, common_name: str, *, dns: Sequence[str], ips: Sequence[str] = (),
              server: bool = True, client: bool = False) -> Issued:
    """A TLS certificate; certgen has no IP addresses in its SANs, hence this builder."""
    key = new_key("rsa2048")
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Passerelle development PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def _users(folder: Path, issuer: Issued, network: str) -> list[Issued]:
    users_dir, keys_dir = folder / "users", folder / "users-keys"
    _mkdir(users_dir)
    _mkdir(keys_dir)
    issued = []
    for address in USERS[network]:
        local = address.partition("@")[0]
        user = make_leaf(issuer, _NAMES.get(local, local), emails=[address])
        _write_certs(users_dir / f"{address}.pem", user.certificate)
        _write_certs(keys_dir / f"{address}.pem", user.certificate)
        _write_key(keys_dir / f"{address}.key", user)
        issued.append(user)
    return issued


def _crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def _serial_of(users: Sequence[Issued], network: str) -> int:
    index = USERS[network].index(REVOKED[network])
    return users[index].certificate.serial_number


def _apicrypt(folder: Path, hostname: str) -> None:
    _mkdir(folder)
    root = make_ca("Apicrypt Dev Root CA", org="Apicrypt (development)")
    _write_pair(folder, "ca", root)
    _write_pair(folder, "gateway", make_leaf(root, "Passerelle apicrypt",
                                             emails=[GATEWAY_ADDRESSES["apicrypt"]]))
    _write_pair(folder, "tls", _tls_leaf(root, hostname, dns=[hostname, "localhost"],
                                         ips=["127.0.0.1"]))
    _write_pair(folder, "next-hop-tls", _tls_leaf(root, "apicrypt next hop",
                                                  dns=["localhost"], ips=["127.0.0.1"]))
    users = _users(folder, root, "apicrypt")
    _write(folder / "crl.pem", _crl_pem(make_crl(root, [_serial_of(users, "apicrypt")])), 0o644)


def _mssante(folder: Path, hostname: str) -> None:
    _mkdir(folder)
    root = make_ca("IGC-Santé Dev Root", org="IGC-Santé (development)")
    inter = make_ca("IGC-Santé Dev Personnes", org="IGC-Santé (development)", issuer=root,
                    path_length=0)
    chain = [inter.certificate]
    _write_pair(folder, "ca", root)
    _write_pair(folder, "intermediate", inter)
    _write_certs(folder / "client-ca.pem", root.certificate, inter.certificate)
    _write_pair(folder, "gateway", make_leaf(inter, "Passerelle mssante",
                                             emails=[GATEWAY_ADDRESSES["mssante"]]))
    _write_pair(folder, "tls", _tls_leaf(inter, hostname, dns=[hostname, "localhost"],
                                         ips=["127.0.0.1"]), chain)
    _write_pair(folder, "relay-client", _tls_leaf(inter, f"{hostname} relay client",
                                                  dns=[hostname], server=False, client=True),
                chain)
    _write_pair(folder, "peer-client", _tls_leaf(inter, "mssante operator (dev)",
                                                 dns=["localhost"], server=False, client=True),
                chain)
    _write_pair(folder, "next-hop-tls", _tls_leaf(inter, "mssante next hop",
                                                  dns=["localhost"], ips=["127.0.0.1"]), chain)
    users = _users(folder, inter, "mssante")
    _write(folder / "crl.pem", _crl_pem(make_crl(inter, [_serial_of(users, "mssante")])), 0o644)
    _write(folder / "crl-root.pem", _crl_pem(make_crl(root, [])), 0o644)


def _q(value: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML escapes)."""
    return json.dumps(value)


def _config_text(hostname: str, ports: dict[str, tuple[int, int]], host: str,
                 require_client_cert: bool, metrics_listen: str | None = None) -> str:
    def hp(port: int) -> str:
        return _q(f"{host}:{port}")

    lines = [
        "# Passerelle development configuration, written by `gateway pki init`.",
        "# Paths are relative to this file. Do not use these keys outside development.",
        "",
        "[gateway]",
        f"hostname = {_q(hostname)}",
        "max_message_bytes = 26214400",
        "max_recipients = 50",
        'pseudonym_key_file = "pseudonym.key"',
        'log_format = "json"',
        'log_level = "info"',
        *([f"metrics_listen = {_q(metrics_listen)}   # /metrics, /healthz, /readyz"]
          if metrics_listen else []),
        "",
        "[networks.apicrypt]",
        f"domains = [{', '.join(_q(d) for d in DOMAINS['apicrypt'])}]",
        'trust_anchors = ["apicrypt/ca.pem"]',
        'crls = ["apicrypt/crl.pem"]',
        'smime_cert = "apicrypt/gateway.pem"',
        'smime_key = "apicrypt/gateway.key"',
        'directory = "apicrypt/users"',
        f"listen = {hp(ports['apicrypt'][0])}",
        'tls_cert = "apicrypt/tls.pem"',
        'tls_key = "apicrypt/tls.key"',
        f"relay = {hp(ports['apicrypt'][1])}",
        "relay_tls_verify = true            # against trust_anchors (next-hop-tls.pem)",
        'charset = "iso-8859-1"',
        "utf8_recipients = []",
        "",
        "[networks.mssante]",
        f"domains = [{', '.join(_q(d) for d in DOMAINS['mssante'])}]",
        'trust_anchors = ["mssante/ca.pem"]',
        'intermediates = ["mssante/intermediate.pem"]',
        'crls = ["mssante/crl-root.pem", "mssante/crl.pem"]',
        'smime_cert = "mssante/gateway.pem"',
        'smime_key = "mssante/gateway.key"',
        'directory = "mssante/users"',
        f"listen = {hp(ports['mssante'][0])}",
        'tls_cert = "mssante/tls.pem"',
        'tls_key = "mssante/tls.key"',
        'client_ca = "mssante/client-ca.pem"      # peers present e.g. mssante/peer-client.pem',
        f"require_client_cert = {'true' if require_client_cert else 'false'}",
        f"relay = {hp(ports['mssante'][1])}",
        'relay_tls_cert = "mssante/relay-client.pem"  # mutual TLS toward the next hop',
        'relay_tls_key = "mssante/relay-client.key"',
        "relay_tls_verify = true",
        'charset = "utf-8"',
        "",
        "# Each person's address on both networks; replies route back through the gateway.",
    ]
    for network in NETWORKS:
        for address in USERS[network]:
            alias = alias_of(address, network)
            pair = {network: address, ("mssante" if network == "apicrypt" else "apicrypt"): alias}
            lines += ["", "[[address_book]]",
                      f"apicrypt = {_q(pair['apicrypt'])}",
                      f"mssante = {_q(pair['mssante'])}"]
    return "\n".join(lines) + "\n"


def init_pki(
    directory: Path,
    *,
    hostname: str = "passerelle.localhost",
    apicrypt_port: int = 2525,
    apicrypt_relay_port: int = 2526,
    mssante_port: int = 2587,
    mssante_relay_port: int = 2588,
    host: str = "127.0.0.1",
    require_client_cert: bool = False,
    force: bool = False,
    metrics_listen: str | None = None,
) -> Path:
    """Write the development PKI and ``gateway.toml`` into ``directory``; return the config path.

    Raises ``FileExistsError`` if ``directory`` exists and is not empty, unless ``force``: then
    the files and folders this function writes are replaced (nothing else is touched).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise FileExistsError(
            f"{directory} is not empty; choose an empty folder or pass --force to replace "
            "the development PKI in it")
    _mkdir(directory)
    for name in NETWORKS:
        target = directory / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    _apicrypt(directory / "apicrypt", hostname)
    _mssante(directory / "mssante", hostname)
    _write(directory / "pseudonym.key", secrets.token_hex(32).encode("ascii") + b"\n", 0o600)
    ports = {"apicrypt": (apicrypt_port, apicrypt_relay_port),
             "mssante": (mssante_port, mssante_relay_port)}
    config = directory / CONFIG_NAME
    _write(config, _config_text(hostname, ports, host, require_client_cert,
                                metrics_listen).encode("utf-8"), 0o644)
    return config


# --- reading back -----------------------------------------------------------------------------


def user_identity(directory: Path, address: str) -> Identity:
    """A sample user's certificate and key, as written by ``init_pki`` (tests, demo)."""
    for network in NETWORKS:
        if address in USERS[network]:
            keys = Path(directory) / network / "users-keys"
            cert = parse_certificates((keys / f"{address}.pem").read_bytes())[0]
            key = parse_private_key((keys / f"{address}.key").read_bytes())
            return Identity(certificate=cert, private_key=key)
    raise KeyError(address)


def _first_cert(path: Path) -> x509.Certificate | None:
    try:
        return parse_certificates(path.read_bytes())[0]
    except (OSError, ValueError):
        return None


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else cert.subject.rfc4514_string()
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _describe(label: str, path: Path) -> str:
    cert = _first_cert(path)
    if cert is None:
        return f"  {label:<14} (missing: {path.name})"
    return f"  {label:<14} {_cn(cert)} (until {cert.not_valid_after_utc:%Y-%m-%d}) {path.name}"


def pki_summary(directory: Path) -> str:
    """A short human-readable listing of a PKI written by ``init_pki``."""
    directory = Path(directory)
    out = [f"development PKI in {directory}"]
    for network in NETWORKS:
        folder = directory / network
        out.append(f"{network}:")
        out.append(_describe("root CA", folder / "ca.pem"))
        if (folder / "intermediate.pem").exists():
            out.append(_describe("intermediate", folder / "intermediate.pem"))
        out.append(_describe("S/MIME", folder / "gateway.pem"))
        out.append(_describe("TLS listener", folder / "tls.pem"))
        if (folder / "relay-client.pem").exists():
            out.append(_describe("relay client", folder / "relay-client.pem"))
        revoked: set[int] = set()
        for crl_file in sorted(folder.glob("crl*.pem")):
            try:
                crls = parse_crls(crl_file.read_bytes())
            except (OSError, ValueError):
                continue
            revoked |= {r.serial_number for crl in crls for r in crl}
        users = sorted((folder / "users").glob("*.pem")) if (folder / "users").is_dir() else []
        for user_file in users:
            cert = _first_cert(user_file)
            status = "REVOKED" if cert is not None and cert.serial_number in revoked else "valid"
            out.append(f"  user           {user_file.stem} [{status}]")
    try:
        book = tomllib.loads((directory / CONFIG_NAME).read_text("utf-8")).get("address_book", [])
    except (OSError, tomllib.TOMLDecodeError):
        book = []
    if book:
        out.append("address book (apicrypt <-> mssante):")
        out += [f"  {e.get('apicrypt')} <-> {e.get('mssante')}" for e in book]
    return "\n".join(out)
