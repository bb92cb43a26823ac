"""Configuration loading: the development config loads clean; broken ones report every problem."""

from __future__ import annotations

import datetime as dt
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from gateway import errors
from gateway.config import (
    Config,
    domain_matches,
    load_config,
    load_identity,
    patterns_overlap,
    read_certificates,
    read_crls,
    split_host_port,
)
from gateway.config.addresses import address, checked, domain, domain_pattern
from gateway.config.sections import host_name
from gateway.devpki import init_pki
from gateway.errors import ConfigError, ConfigProblem
from gateway.smime import certgen
from gateway.translate import routing

# --- helpers ----------------------------------------------------------------------------------


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(type(v))


def dump_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for the shapes of our config (tables, arrays of tables, scalars)."""
    out: list[str] = []

    def table(prefix: str, t: dict[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, dict)
                   and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        if prefix:
            out.append(f"[{prefix}]")
        out.extend(f"{k} = {_value(v)}" for k, v in scalars.items())
        out.append("")
        for k, v in t.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    out.append(f"[[{prefix + '.' if prefix else ''}{k}]]")
                    out.extend(f"{ik} = {_value(iv)}" for ik, iv in item.items())
                    out.append("")

    table("", data)
    return "\n".join(out)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_pki(tmp_path_factory.mktemp("pki") / "dev")


@pytest.fixture
def base(pki: Path) -> dict[str, Any]:
    """The development config as a dict, its paths made absolute (so it can live elsewhere)."""
    data = tomllib.loads(pki.read_text("utf-8"))
    root = pki.parent

    def absolute(v: str) -> str:
        return str(root / v)

    data["gateway"]["pseudonym_key_file"] = absolute(data["gateway"]["pseudonym_key_file"])
    for net in data["networks"].values():
        for key, value in list(net.items()):
            if key in {"trust_anchors", "intermediates", "crls"}:
                net[key] = [absolute(v) for v in value]
            elif key in {"smime_cert", "smime_key", "directory", "tls_cert", "tls_key",
                         "client_ca", "relay_tls_cert", "relay_tls_key"}:
                net[key] = absolute(value)
    return data


def write(tmp_path: Path, data: dict[str, Any], name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(dump_toml(data), "utf-8")
    return path


def problems_of(path: Path, **kwargs: Any) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return info.value.problems


def has(problems: list[ConfigProblem], key: str, fragment: str) -> bool:
    return any(p.key == key and fragment in p.message for p in problems)


# --- the development configuration --------------------------------------------------------------


def test_devpki_config_loads_with_no_problem(pki: Path) -> None:
    config = load_config(pki)
    assert isinstance(config, Config)
    assert config.path == pki.resolve()
    assert config.warnings == ()
    assert config.gateway.hostname == "passerelle.localhost"
    assert config.gateway.max_message_bytes == 26214400
    assert config.gateway.max_recipients == 50
    assert config.gateway.log_format == "json"
    assert config.gateway.max_depth == 6
    assert set(config.networks) == {"apicrypt", "mssante"}
    api, mss = config.network("apicrypt"), config.network("mssante")
    assert (api.name, mss.name) == ("apicrypt", "mssante")
    assert config.other("apicrypt") == "mssante" and config.other("mssante") == "apicrypt"
    assert api.domains == ("*.apicrypt.org",) and mss.domains == ("*.mssante.fr",)
    assert api.charset == "iso-8859-1" and mss.charset == "utf-8"
    assert api.listen_address == ("127.0.0.1", 2525)
    assert mss.relay_address == ("127.0.0.1", 2588)
    assert mss.intermediates and mss.intermediates[0].name == "intermediate.pem"
    assert mss.relay_tls_cert is not None and mss.relay_tls_verify
    for net in (api, mss):
        for path in (*net.trust_anchors, *net.crls, net.smime_cert, net.smime_key):
            assert path.is_absolute() and path.is_file()
        assert net.directory.is_dir()
    assert len(config.address_book) == 6
    assert api.owns("Jean.Dupont@Medical59.Apicrypt.org")
    assert not api.owns("marie.curie@hopital-test.mssante.fr")
    assert not api.owns("someone@apicrypt.org")  # "*." means a subdomain, not the domain


def test_runtime_readers(pki: Path) -> None:
    config = load_config(pki)
    mss = config.network("mssante")
    identity = load_identity(mss)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert identity.certificate.public_key().public_bytes(*fmt) == \
        identity.private_key.public_key().public_bytes(*fmt)
    anchors = read_certificates(mss.trust_anchors[0])
    assert [c.subject.rfc4514_string() for c in anchors] == [
        "CN=IGC-Santé Dev Root,O=IGC-Santé (development),C=FR"]
    crls = read_crls(mss.crls)
    assert len(crls) == 2
    # DER works as well as PEM
    der_dir = pki.parent / "der"
    der_dir.mkdir(exist_ok=True)
    (der_dir / "ca.der").write_bytes(anchors[0].public_bytes(serialization.Encoding.DER))
    (der_dir / "crl.der").write_bytes(crls[1].public_bytes(serialization.Encoding.DER))
    assert read_certificates(der_dir / "ca.der") == anchors
    assert read_crls([der_dir / "crl.der"])[0] == crls[1]
    with pytest.raises(ConfigError):
        read_certificates(der_dir / "missing.pem")
    with pytest.raises(ConfigError):
        read_crls([mss.smime_key])


# --- broken configurations ---------------------------------------------------------------------


def test_many_problems_reported_at_once(tmp_path: Path, base: dict[str, Any]) -> None:
    api, mss = base["networks"]["apicrypt"], base["networks"]["mssante"]
    api["trust_anchors"] = [str(tmp_path / "nowhere" / "ca.pem")]
    mss["smime_key"] = api["smime_key"]  # a key of another certificate
    base["networks"]["medimail"] = {"domains": ["*.medimail.fr"]}
    api["domains"] = ["*.apicrypt.org", "bad domain.org", "a.*.org"]
    base["gateway"]["hostnme"] = "typo.example.org"
    mss["relay"] = "127.0.0.1:70000"
    api["listen"] = "localhost"
    path = write(tmp_path, base)
    problems = problems_of(path)
    assert all(p.file == str(path) for p in problems)
    assert has(problems, "networks.apicrypt.trust_anchors[0]", "not found")
    assert has(problems, "networks.mssante.smime_key", "does not match")
    assert has(problems, "networks.medimail", "unknown network")
    assert has(problems, "networks.apicrypt.domains[1]", "bad address pattern")
    assert has(problems, "networks.apicrypt.domains[2]", "bad address pattern")
    assert has(problems, "gateway.hostnme", "unknown key")
    assert has(problems, "networks.mssante.relay", "port")
    assert has(problems, "networks.apicrypt.listen", "host:port")
    assert len(problems) == 8
    text = str(ConfigError(problems))
    assert "BEGIN" not in text and "PRIVATE" not in text


def test_missing_keys_and_wrong_types(tmp_path: Path, base: dict[str, Any]) -> None:
    del base["gateway"]["hostname"]
    del base["networks"]["mssante"]["relay"]
    del base["networks"]["apicrypt"]["smime_cert"]
    base["gateway"]["max_recipients"] = "50"
    base["gateway"]["max_sessions"] = True
    base["gateway"]["log_format"] = "xml"
    base["gateway"]["drain_seconds"] = -1
    base["networks"]["mssante"]["require_client_cert"] = "yes"
    base["networks"]["mssante"]["crls"] = 5
    base["networks"]["mssante"]["intermediates"] = ["ok.pem", 7]
    base["networks"]["apicrypt"]["charset"] = "no-such-charset"
    base["networks"]["apicrypt"]["directory"] = str(tmp_path / "file.txt")
    (tmp_path / "file.txt").write_text("x")
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "gateway.hostname", "missing required key")
    assert has(problems, "networks.mssante.relay", "missing required key")
    assert has(problems, "networks.apicrypt.smime_cert", "missing required key")
    assert has(problems, "gateway.max_recipients", "integer")
    assert has(problems, "gateway.max_sessions", "integer")
    assert has(problems, "gateway.log_format", "json")
    assert has(problems, "gateway.drain_seconds", "positive")
    assert has(problems, "networks.mssante.require_client_cert", "true or false")
    assert has(problems, "networks.mssante.crls", "list of strings")
    assert has(problems, "networks.mssante.intermediates[0]", "not found")
    assert has(problems, "networks.mssante.intermediates[1]", "must be a string")
    assert has(problems, "networks.apicrypt.charset", "unknown charset")
    assert has(problems, "networks.apicrypt.directory", "not a folder")


def test_missing_network_and_sections(tmp_path: Path, base: dict[str, Any]) -> None:
    del base["networks"]["mssante"]
    del base["gateway"]
    base["address_book"] = base["address_book"][:1]
    base["surprise"] = {"x": 1}
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.mssante", "missing required table")
    assert has(problems, "surprise", "unknown key")
    assert has(problems, "gateway", "missing required table")
    assert not has(problems, "gateway.hostname", "")  # not repeated for a missing table


def test_toml_syntax_error_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[gateway]\nhostname = "x.example.org"\nmax_recipients = = 3\n')
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].file == str(path)
    assert "TOML syntax error" in problems[0].message and "line 3" in problems[0].message


def test_missing_config_file(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "absent.toml")
    assert problems[0].key == "(file)" and "cannot read" in problems[0].message


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, pki: Path) -> None:
    text = pki.read_text("utf-8")
    conf = pki.parent / "conf" / "sub"
    conf.mkdir(parents=True, exist_ok=True)
    # Every relative path now needs two levels up; quoted paths start with a network name.
    for prefix in ('"apicrypt/', '"mssante/', '"pseudonym.key'):
        text = text.replace(prefix, '"../../' + prefix[1:])
    moved = conf / "gateway.toml"
    moved.write_text(text, "utf-8")
    config = load_config(moved)
    assert config.network("apicrypt").trust_anchors == (pki.parent / "apicrypt" / "ca.pem",)
    assert config.network("mssante").directory == pki.parent / "mssante" / "users"
    assert config.gateway.pseudonym_key_file == pki.parent / "pseudonym.key"
    # ...and the original, relative to its own folder, still loads from another cwd.
    old = Path.cwd()
    try:
        os.chdir(tmp_path)
        assert load_config(pki).network("apicrypt").smime_cert == \
            pki.parent / "apicrypt" / "gateway.pem"
        assert load_config(Path(os.path.relpath(moved, tmp_path))).path == moved
    finally:
        os.chdir(old)


def test_overlapping_domains(tmp_path: Path, base: dict[str, Any]) -> None:
    base["networks"]["mssante"]["domains"] = ["*.mssante.fr", "medical59.apicrypt.org"]
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.mssante.domains", "overlaps")


def test_address_book_checks(tmp_path: Path, base: dict[str, Any]) -> None:
    book = base["address_book"]
    book.append(dict(book[0]))  # duplicate of entry 0 on both sides
    book.append({"apicrypt": "x@hopital.mssante.fr", "mssante": "not an address"})
    book.append({"apicrypt": "y@medical59.apicrypt.org"})
    book.append({"apicrypt": "z@medical59.apicrypt.org", "mssante": "z@a.mssante.fr",
                 "medimail": "z@m.fr"})
    n = len(book)
    problems = problems_of(write(tmp_path, base))
    assert has(problems, f"address_book[{n - 4}].apicrypt", "duplicate")
    assert has(problems, f"address_book[{n - 4}].mssante", "duplicate")
    assert has(problems, f"address_book[{n - 3}].apicrypt", "not in the domains")
    assert has(problems, f"address_book[{n - 3}].mssante", "bad address")
    assert has(problems, f"address_book[{n - 2}].mssante", "missing required key")
    assert has(problems, f"address_book[{n - 1}].medimail", "unknown key")


def test_address_book_is_normalised(tmp_path: Path, base: dict[str, Any]) -> None:
    base["address_book"] = [{"apicrypt": "Jean.Dupont@MEDICAL59.apicrypt.org",
                             "mssante": "jean@hôpital.mssante.fr"}]
    config = load_config(write(tmp_path, base))
    pair = config.address_book[0]
    assert pair.apicrypt == "jean.dupont@medical59.apicrypt.org"
    assert pair.mssante == "jean@xn--hpital-ixa.mssante.fr"
    assert pair.on("mssante") == pair.mssante


def test_encrypted_key_and_bad_pem(tmp_path: Path, base: dict[str, Any], pki: Path) -> None:
    key = serialization.load_pem_private_key(
        (pki.parent / "apicrypt" / "gateway.key").read_bytes(), None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret-passphrase")))
    encrypted.chmod(0o600)
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    base["networks"]["apicrypt"]["smime_key"] = str(encrypted)
    base["networks"]["apicrypt"]["tls_cert"] = str(junk)
    base["networks"]["mssante"]["crls"] = [str(junk)]
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.apicrypt.smime_key", "encrypted")
    assert has(problems, "networks.apicrypt.tls_cert", "not a PEM or DER certificate")
    assert has(problems, "networks.mssante.crls[0]", "not a PEM or DER CRL")
    assert not any("secret" in p.message for p in problems)


def test_open_key_permissions_are_a_warning(tmp_path: Path, base: dict[str, Any],
                                            pki: Path) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes((pki.parent / "apicrypt" / "gateway.key").read_bytes())
    loose.chmod(0o644)
    base["networks"]["apicrypt"]["smime_key"] = str(loose)
    config = load_config(write(tmp_path, base))
    assert any("networks.apicrypt.smime_key" in w and "chmod 600" in w for w in config.warnings)


def test_certificate_expiry(pki: Path) -> None:
    cert = x509.load_pem_x509_certificate(
        (pki.parent / "mssante" / "gateway.pem").read_bytes())
    soon = cert.not_valid_after_utc - dt.timedelta(days=10)
    config = load_config(pki, now=soon)
    assert any("networks.mssante.smime_key" in w or "networks.mssante.smime_cert" in w
               for w in config.warnings)
    later = cert.not_valid_after_utc + dt.timedelta(days=1)
    problems = problems_of(pki, now=later)
    assert has(problems, "networks.mssante.smime_cert", "expired")
    assert has(problems, "networks.apicrypt.smime_cert", "expired")


def test_listen_or_imap(tmp_path: Path, base: dict[str, Any]) -> None:
    api = base["networks"]["apicrypt"]
    for key in ("listen", "tls_cert", "tls_key"):
        del api[key]
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.apicrypt.listen", "imap")

    secret = tmp_path / "imap.pw"
    secret.write_text("hunter2\n")
    secret.chmod(0o640)
    api["imap"] = {"host": "imap.medical59.apicrypt.org", "user": "passerelle",
                   "password_file": "imap.pw", "poll_seconds": 5}
    config = load_config(write(tmp_path, base))
    imap = config.network("apicrypt").imap
    assert imap is not None and config.network("apicrypt").listen is None
    assert imap.password_file == secret and imap.port == 993 and imap.poll_seconds == 5.0
    assert imap.mailbox == "INBOX" and imap.processing_folder == "Passerelle/Processing"
    assert imap.rejected_folder == "Passerelle/Rejected" and imap.lease_seconds == 600.0
    assert any("imap.password_file" in w and "chmod 600" in w for w in config.warnings)
    assert not any("hunter2" in w for w in config.warnings)

    api["imap"] = {"host": "imap.example.org", "user": "u", "password_file": "nope.pw",
                   "port": 0, "mailbox": "INBOX", "processing_folder": "INBOX",
                   "client_cert": api["smime_cert"], "colour": "blue"}
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.apicrypt.imap.password_file", "not found")
    assert has(problems, "networks.apicrypt.imap.port", "1..65535")
    assert has(problems, "networks.apicrypt.imap.processing_folder", "differ")
    assert has(problems, "networks.apicrypt.imap.client_key", "go together")
    assert has(problems, "networks.apicrypt.imap.colour", "unknown key")
    assert not any("hunter2" in p.message for p in problems)


def test_rewrite_rule_and_utf8_recipients(tmp_path: Path, base: dict[str, Any]) -> None:
    base["networks"]["apicrypt"]["rewrite"] = {"domain": "Relais.Passerelle.MSSante.fr"}
    base["networks"]["apicrypt"]["utf8_recipients"] = ["Labo.Biolille@labo59.apicrypt.org"]
    config = load_config(write(tmp_path, base))
    api = config.network("apicrypt")
    assert api.rewrite is not None and api.rewrite.domain == "relais.passerelle.mssante.fr"
    assert api.utf8_recipients == ("labo.biolille@labo59.apicrypt.org",)
    assert config.network("mssante").rewrite is None

    base["networks"]["apicrypt"]["rewrite"] = {"domain": "*.bad", "extra": 1}
    base["networks"]["apicrypt"]["utf8_recipients"] = ["x@hopital.mssante.fr"]
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.apicrypt.rewrite.domain", "bad domain")
    assert has(problems, "networks.apicrypt.rewrite.extra", "unknown key")
    assert has(problems, "networks.apicrypt.utf8_recipients[0]", "not an address of")


def test_relay_client_pair(tmp_path: Path, base: dict[str, Any]) -> None:
    del base["networks"]["mssante"]["relay_tls_key"]
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.mssante.relay_tls_key", "go together")


def test_require_starttls_false_only_on_loopback(tmp_path: Path, base: dict[str, Any]) -> None:
    net = base["networks"]["apicrypt"]
    net["require_starttls"] = False
    net["listen"] = "127.0.0.1:2525"
    config = load_config(write(tmp_path, base))  # no problem
    assert config.network("apicrypt").require_starttls is False
    assert config.network("mssante").require_starttls is True
    net["listen"] = "0.0.0.0:2525"
    net["require_client_cert"] = True
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.apicrypt.require_starttls", "loopback")
    assert has(problems, "networks.apicrypt.require_starttls", "require_client_cert")


# --- syntax helpers ----------------------------------------------------------------------------


def check_domain_pattern(value: object) -> tuple[str | None, str | None]:
    return checked(domain_pattern, value)


def check_address(value: object) -> tuple[str | None, str | None]:
    return checked(address, value)


@pytest.mark.parametrize(("pattern", "expected"), [
    ("example.org", "example.org"),
    ("Example.ORG", "example.org"),
    ("*.apicrypt.org", "*.apicrypt.org"),
    ("*.hôpital.fr", "*.xn--hpital-ixa.fr"),
    ("xn--hpital-ixa.fr", "xn--hpital-ixa.fr"),
])
def test_good_domain_patterns(pattern: str, expected: str) -> None:
    assert check_domain_pattern(pattern) == (expected, None)


@pytest.mark.parametrize("pattern", [
    "", "*", "*.", "a.*.org", "*a.org", "**.org", "a b.org", "user@example.org", "-a.org",
    "a-.org", "a..org", "a.org.", "a_b.org", "1.2.3.4", "xn--zz-.org", "x" * 64 + ".org",
    ".".join(["abcdefghi"] * 30), "\u00ad.org", 42, None,
    # not fully qualified: routing refuses such domains, so the configuration does too
    "localhost",
    # look-alikes that IDNA 2003 would map onto another name: refused, never mapped
    "ｅxample.fr", "straße.fr", "*.ＡＰＩＣＲＹＰＴ.org",
])
def test_bad_domain_patterns(pattern: object) -> None:
    value, reason = check_domain_pattern(pattern)
    assert value is None and reason


def test_host_name_may_be_a_single_label() -> None:
    assert host_name("LocalHost") == "localhost"
    assert checked(host_name, "*.example.org")[0] is None


def test_wildcard_refused_where_a_domain_is_needed() -> None:
    assert checked(domain, "*.example.org")[0] is None


@given(st.one_of(st.text(), st.text(alphabet="abcé*.-@ xX\u00ad\u3002")))
def test_domain_pattern_validator_never_raises(value: str) -> None:
    normalised, reason = check_domain_pattern(value)
    assert (normalised is None) != (reason is None)
    if normalised is not None:
        assert normalised.isascii() and normalised == normalised.lower()
        assert check_domain_pattern(normalised) == (normalised, None)  # idempotent
        assert "*" not in normalised.removeprefix("*.")


@given(st.text())
def test_address_checker_never_raises(value: str) -> None:
    normalised, reason = check_address(value)
    assert (normalised is None) != (reason is None)
    if normalised is not None:
        assert check_address(normalised) == (normalised, None)


ADDRESSY = st.text(alphabet="aBé%!.@-_ｅß\"<>[]+=xn", max_size=30)


@given(st.one_of(st.text(max_size=40), ADDRESSY,
                 st.builds("{}@{}".format, ADDRESSY, st.sampled_from(
                     ["medical59.apicrypt.org", "ｅxample.fr", "straße.fr", "hôpital.fr"]))))
def test_config_and_routing_judge_an_address_alike(value: str) -> None:
    """What the configuration accepts is what routing accepts, in the same canonical form."""
    configured, _ = check_address(value)
    try:
        routed: str | None = routing.normalise_address(value)
    except errors.RecipientRefused:
        routed = None
    assert configured == routed


@pytest.mark.parametrize(("raw", "why"), [
    ("a%b@medical59.apicrypt.org", "relay hack"),
    ("dr@ｅxample.fr", "non-canonical"),
    ("dr@straße.fr", "non-canonical"),
    ("x!y@medical59.apicrypt.org", "relay hack"),
    ("é@medical59.apicrypt.org", "8-bit local part"),
])
def test_address_book_refuses_what_routing_refuses(tmp_path: Path, base: dict[str, Any],
                                                   raw: str, why: str) -> None:
    base["address_book"] = [{"apicrypt": raw, "mssante": "jean@hopital.mssante.fr"}]
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "address_book[0].apicrypt", why), problems
    with pytest.raises(errors.RecipientRefused):
        routing.normalise_address(raw)


def test_crl_bundle_keeps_the_second_ca(tmp_path: Path, base: dict[str, Any],
                                        pki: Path) -> None:
    """A PEM file with the CRLs of two CAs: the revocations of the second are loaded too."""
    files = sorted((pki.parent / "mssante").glob("crl*.pem"))
    assert files, "the development PKI writes a CRL"
    anchors = base["networks"]["mssante"]["trust_anchors"]
    first = x509.load_pem_x509_crl(files[0].read_bytes())
    bundle = tmp_path / "bundle.pem"
    # the second CRL: a fresh CA of its own, trusted on this network too
    ca = certgen.make_ca("Second CA")
    second = certgen.make_crl(ca, [0x1234])
    bundle.write_bytes(first.public_bytes(serialization.Encoding.PEM)
                       + second.public_bytes(serialization.Encoding.PEM))
    extra_anchor = tmp_path / "second-ca.pem"
    extra_anchor.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    base["networks"]["mssante"]["trust_anchors"] = [*anchors, str(extra_anchor)]
    base["networks"]["mssante"]["crls"] = [str(bundle)]
    config = load_config(write(tmp_path, base))
    crls = read_crls(config.network("mssante").crls)
    assert len(crls) == 2
    assert crls[1].get_revoked_certificate_by_serial_number(0x1234) is not None


def test_crl_of_an_unknown_issuer_is_a_problem(tmp_path: Path, base: dict[str, Any]) -> None:
    """A CRL whose issuer is none of the network's CAs would protect nothing: refused."""
    ca = certgen.make_ca("Unrelated CA")
    stray = tmp_path / "stray.pem"
    stray.write_bytes(certgen.make_crl(ca, [7]).public_bytes(serialization.Encoding.PEM))
    base["networks"]["apicrypt"]["crls"] = [str(stray)]
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.apicrypt.crls[0]", "issued by none of the trust_anchors")


def test_matching_and_overlap() -> None:
    assert domain_matches("*.apicrypt.org", "medical59.apicrypt.org")
    assert domain_matches("*.apicrypt.org", "a.b.apicrypt.org")
    assert not domain_matches("*.apicrypt.org", "apicrypt.org")
    assert not domain_matches("*.apicrypt.org", "evilapicrypt.org")
    assert domain_matches("apicrypt.org", "apicrypt.org")
    assert patterns_overlap("*.org", "*.apicrypt.org")
    assert patterns_overlap("*.a.org", "x.a.org")
    assert patterns_overlap("x.a.org", "x.a.org")
    assert not patterns_overlap("*.a.org", "a.org")
    assert not patterns_overlap("*.a.org", "*.b.org")
    assert not patterns_overlap("*.a.org", "*.ba.org")


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:25") == ("127.0.0.1", 25)
    assert split_host_port("[::1]:2525") == ("::1", 2525)
    assert split_host_port("mx.example.org:65535") == ("mx.example.org", 65535)
    for bad in ("localhost", ":25", "h:0", "h:65536", "::1:25", "h:2x5", "[::1:25", "h: 25"):
        with pytest.raises(ValueError):
            split_host_port(bad)


# --- defaults: written once, in the dataclasses ---------------------------------------------------


def test_transport_settings_take_their_defaults_from_the_config_dataclasses() -> None:
    from gateway.config import GatewaySettings, ImapConfig, NetworkConfig, default_of
    from gateway.smime.unwrap import DEFAULT_MAX_DEPTH
    from gateway.transport.imap_session import ImapSettings
    from gateway.transport.smtp_in import ListenerSettings

    g = GatewaySettings(hostname="gw.example.org")
    listener = ListenerSettings(network="apicrypt", host="127.0.0.1", port=0,
                                hostname="gw.example.org", ssl_context=None)
    assert (listener.max_message_bytes, listener.max_recipients, listener.max_sessions,
            listener.max_sessions_per_ip, listener.rate_limit_per_minute) == (
        g.max_message_bytes, g.max_recipients, g.max_sessions, g.max_sessions_per_ip,
        g.rate_limit_per_minute)
    assert listener.command_timeout == g.command_timeout_seconds
    assert listener.data_budget == g.data_timeout_seconds
    assert listener.require_starttls == default_of(NetworkConfig, "require_starttls")
    imap = ImapSettings(network="apicrypt", host="h", port=993, user="u", password="p")
    i = ImapConfig(host="h", user="u", password_file=Path("p"))
    assert (imap.mailbox, imap.processing_folder, imap.rejected_folder, imap.lease_seconds,
            imap.poll_seconds) == (i.mailbox, i.processing_folder, i.rejected_folder,
                                   i.lease_seconds, i.poll_seconds)
    assert imap.max_message_bytes == g.max_message_bytes
    assert g.max_depth == DEFAULT_MAX_DEPTH


def test_every_settings_field_is_a_key(tmp_path: Path, base: dict[str, Any]) -> None:
    """The accepted keys are the dataclass fields: each one, written with its default, loads."""
    from gateway.config import GatewaySettings, keys_of

    defaults = GatewaySettings(hostname="gw.example.org")
    for name in keys_of(GatewaySettings):
        value = getattr(defaults, name)
        if isinstance(value, bool | int | float | str):
            base["gateway"].setdefault(name, value)
    config = load_config(write(tmp_path, base))
    assert config.gateway.max_depth == defaults.max_depth


def test_crl_policy(tmp_path: Path, base: dict[str, Any]) -> None:
    base["networks"]["mssante"]["crl_policy"] = "fail-closed"
    config = load_config(write(tmp_path, base))
    assert config.network("mssante").crl_policy == "fail-closed"
    assert config.network("apicrypt").crl_policy == "fail-open"
    base["networks"]["mssante"]["crl_policy"] = "strict"
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.mssante.crl_policy", "fail-open")


def test_a_misspelt_key_gets_a_suggestion(tmp_path: Path, base: dict[str, Any]) -> None:
    base["networks"]["apicrypt"]["trust_anchor"] = base["networks"]["apicrypt"].pop(
        "trust_anchors")
    base["gateway"]["max_recipient"] = 10
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.apicrypt.trust_anchor", "did you mean trust_anchors?")
    assert has(problems, "gateway.max_recipient", "did you mean max_recipients?")
    base["gateway"]["colour"] = "blue"  # nothing close: no guess
    assert any(p.key == "gateway.colour" and p.message == "unknown key"
               for p in problems_of(write(tmp_path, base)))


@pytest.mark.parametrize("other", ["127.0.0.1:2525", "[127.0.0.1]:2525"])
def test_two_listeners_on_one_address_are_refused(tmp_path: Path, base: dict[str, Any],
                                                  other: str) -> None:
    base["networks"]["apicrypt"]["listen"] = "127.0.0.1:2525"
    base["networks"]["mssante"]["listen"] = other
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.mssante.listen", "same address as networks.apicrypt.listen")
    base["networks"]["mssante"]["listen"] = "127.0.0.1:2587"
    base["gateway"]["metrics_listen"] = "127.0.0.1:2587"
    assert has(problems_of(write(tmp_path, base)), "gateway.metrics_listen",
               "same address as networks.mssante.listen")


def test_document_identifiers_are_configuration_keys(tmp_path: Path,
                                                     base: dict[str, Any]) -> None:
    base["networks"]["mssante"]["documents"] = {
        "patient_id_root": "1.2.250.1.4242.1", "custodian_finess": "750712184",
        "custodian_name": "GHU Paris", "source_id": "1.2.250.1.4242.9"}
    config = load_config(write(tmp_path, base))
    documents = config.network("mssante").documents
    assert (documents.patient_id_root, documents.custodian_finess, documents.source_id) == (
        "1.2.250.1.4242.1", "750712184", "1.2.250.1.4242.9")
    assert documents.lab_code_system == "1.2.250.1.999.1.3"  # the default, not configured
    base["networks"]["mssante"]["documents"] = {"patient_id_root": "urn:oid:1.2",
                                                "custodian_finess": "75", "colour": "x"}
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.mssante.documents.patient_id_root", "must be an OID")
    assert has(problems, "networks.mssante.documents.custodian_finess", "FINESS")
    assert has(problems, "networks.mssante.documents.colour", "unknown key")


def test_an_ldap_directory_is_checked(tmp_path: Path, base: dict[str, Any]) -> None:
    net = base["networks"]["mssante"]
    net["ldap"] = {"url": "ldaps://annuaire.sante.test:636", "base_dn": "ou=people,dc=sante",
                   "timeout_seconds": 2}
    del net["directory"]  # the directory is LDAP: no folder needed
    config = load_config(write(tmp_path, base))
    ldap = config.network("mssante").ldap
    assert ldap is not None and ldap.url.startswith("ldaps://") and ldap.timeout_seconds == 2
    assert ldap.certificate_filter == "(mail={address})"
    net["ldap"] = {"url": "http://annuaire", "base_dn": "dc=x", "starttls": False,
                   "certificate_filter": "mail=*", "bind_dn": "cn=gw,dc=x"}
    problems = problems_of(write(tmp_path, base))
    assert has(problems, "networks.mssante.ldap.url", "ldaps://")
    assert has(problems, "networks.mssante.ldap.certificate_filter", "{address}")
    assert has(problems, "networks.mssante.ldap.password_file", "missing required key")
    net["ldap"] = {"url": "ldap://annuaire.sante.test", "base_dn": "dc=x", "starttls": False}
    assert has(problems_of(write(tmp_path, base)), "networks.mssante.ldap.starttls",
               "loopback")


def test_a_domains_file_feeds_the_network_and_names_a_bad_line(tmp_path: Path,
                                                                base: dict[str, Any]) -> None:
    """The MSSanté operators publish the trust space's domains: one a line."""
    listing = tmp_path / "mssante-domains.txt"
    listing.write_text("# liste des domaines\nchu-test.mssante.fr\n*.aphp.mssante.fr\n\n"
                       "hopital-test.mssante.fr  # commentaire\npasserelle.mssante.fr\n")
    net = base["networks"]["mssante"]
    net["domains_file"] = str(listing)
    del net["domains"]
    config = load_config(write(tmp_path, base))
    mss = config.network("mssante")
    assert mss.file_domains == 4
    assert mss.owns("a@chu-test.mssante.fr") and mss.owns("b@psy.aphp.mssante.fr")
    assert not mss.owns("c@autre.mssante.fr") and not mss.owns("d@aphp.mssante.fr")
    listing.write_text("chu-test.mssante.fr\nnot a domain\n")
    assert has(problems_of(write(tmp_path, base)), "networks.mssante.domains_file",
               "line 2: bad domain pattern")


def test_domain_sets_agree_with_the_one_rule() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from gateway.config.addresses import DomainSet, domain_matches

    labels = st.sampled_from(["a", "b", "mssante", "fr", "chu", "x"])
    domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
    patterns = st.lists(st.one_of(domains, domains.map(lambda d: "*." + d)), max_size=6)

    @given(patterns, domains)
    def agree(pats: list[str], dom: str) -> None:
        assert DomainSet(pats).matches(dom) == any(domain_matches(p, dom) for p in pats)

    agree()


def test_the_fast_path_of_the_address_rule_agrees_with_the_full_rule() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gateway.config import addresses

    chars = st.sampled_from(list("abcXYZ09.-_+%!@#'=xn-- é\u0131"))
    texts = st.text(chars, min_size=1, max_size=30)
    shaped = st.tuples(texts, texts).map(lambda t: f"{t[0]}@{t[1]}")

    @settings(max_examples=400)
    @given(st.one_of(texts, shaped))
    def agree(value: str) -> None:
        fast = addresses._simple(value)
        if fast is None:
            return
        slow = addresses.address("<" + value + ">")  # the bracketed form takes the full path
        assert fast == slow

    agree()
