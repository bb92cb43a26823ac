"""The folder directory: certificates found by any of their addresses, junk and CAs left out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from gateway.devpki import init_pki
from gateway.errors import DirectoryUnavailable
from gateway.smime.certgen import Issued, make_ca, make_leaf
from gateway.smime.directory import (
    CertificateDirectory,
    FolderDirectory,
    StaticDirectory,
    email_addresses,
    normalise_address,
)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca("Directory Test CA")


@pytest.fixture(scope="module")
def people(ca: Issued) -> dict[str, x509.Certificate]:
    return {
        "multi": make_leaf(ca, "Jean Dupont", emails=["Jean.Dupont@Medical59.apicrypt.org",
                                                      "secretariat@medical59.apicrypt.org"],
                           email_in_subject=True).certificate,
        "subject_only": make_leaf(ca, "Labo", emails=["labo@labo59.apicrypt.org"],
                                  email_in_subject=True, san=False).certificate,
        "der": make_leaf(ca, "Marie Curie",
                         emails=["marie.curie@hopital-test.mssante.fr"]).certificate,
        "idn": make_leaf(ca, "Hôpital", emails=["accueil@xn--hpital-ixa.mssante.fr"]).certificate,
        "bundle1": make_leaf(ca, "A", emails=["a@chu-test.mssante.fr"]).certificate,
        "bundle2": make_leaf(ca, "B", emails=["b@chu-test.mssante.fr"]).certificate,
        "renewed": make_leaf(ca, "Marie Curie",
                             emails=["marie.curie@hopital-test.mssante.fr"]).certificate,
        "no_address": make_leaf(ca, "Nobody").certificate,
    }


@pytest.fixture
def folder(tmp_path: Path, ca: Issued, people: dict[str, x509.Certificate]) -> Path:
    d = tmp_path / "users"
    d.mkdir()
    (d / "jean.pem").write_bytes(pem(people["multi"]))
    (d / "jean-copy.crt").write_bytes(pem(people["multi"]))  # the same certificate twice
    (d / "labo.PEM").write_bytes(pem(people["subject_only"]))
    (d / "marie.cer").write_bytes(people["der"].public_bytes(serialization.Encoding.DER))
    (d / "hopital.pem").write_bytes(pem(people["idn"]))
    (d / "bundle.pem").write_bytes(pem(ca.certificate, people["bundle1"], people["bundle2"]))
    (d / "ca.pem").write_bytes(pem(ca.certificate))
    (d / "junk.pem").write_bytes(b"this is not a certificate\n")
    (d / "broken.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (d / "nobody.pem").write_bytes(pem(people["no_address"]))
    (d / "notes.txt").write_bytes(pem(people["renewed"]))  # not a certificate suffix: ignored
    (d / "sub.pem").mkdir()  # a folder with a certificate suffix: ignored
    return d


def test_lookup_by_every_address_case_insensitively(folder: Path,
                                                    people: dict[str, x509.Certificate]) -> None:
    directory: CertificateDirectory = FolderDirectory(folder)
    assert directory.lookup("jean.dupont@medical59.apicrypt.org") == [people["multi"]]
    assert directory.lookup("JEAN.DUPONT@MEDICAL59.APICRYPT.ORG") == [people["multi"]]
    assert directory.lookup("Secretariat@Medical59.apicrypt.org") == [people["multi"]]
    assert directory.lookup(" labo@labo59.apicrypt.org ") == [people["subject_only"]]
    assert directory.lookup("marie.curie@hopital-test.mssante.fr") == [people["der"]]
    assert directory.lookup("a@chu-test.mssante.fr") == [people["bundle1"]]
    assert directory.lookup("b@chu-test.mssante.fr") == [people["bundle2"]]
    assert directory.lookup("nobody@medical59.apicrypt.org") == []
    assert directory.lookup("not an address") == []


def test_idn_domain_in_either_form(folder: Path, people: dict[str, x509.Certificate]) -> None:
    directory = FolderDirectory(folder)
    assert directory.lookup("accueil@xn--hpital-ixa.mssante.fr") == [people["idn"]]
    assert directory.lookup("Accueil@HÔPITAL.mssante.fr") == [people["idn"]]


def test_skipped_files_and_cas(folder: Path) -> None:
    directory = FolderDirectory(folder)
    skipped = {(s.file, s.reason) for s in directory.skipped}
    assert ("ca.pem", "CA certificate") in skipped
    assert ("bundle.pem", "CA certificate") in skipped
    assert ("junk.pem", "not a PEM or DER certificate") in skipped
    assert ("broken.pem", "not a PEM or DER certificate") in skipped
    assert ("nobody.pem", "no e-mail address in the certificate") in skipped
    assert not any(s.file in {"notes.txt", "sub.pem"} for s in directory.skipped)
    # jean twice (two files), labo, marie, hopital, a, b
    assert len(directory) == 7
    assert "secretariat@medical59.apicrypt.org" in directory.addresses


def test_several_certificates_for_one_address_and_reload(
        folder: Path, people: dict[str, x509.Certificate]) -> None:
    directory = FolderDirectory(folder)
    assert directory.lookup("marie.curie@hopital-test.mssante.fr") == [people["der"]]
    (folder / "marie-renewed.pem").write_bytes(pem(people["renewed"]))
    assert len(directory.lookup("marie.curie@hopital-test.mssante.fr")) == 1  # read once
    directory.reload()
    found = directory.lookup("marie.curie@hopital-test.mssante.fr")
    assert sorted(c.serial_number for c in found) == sorted(
        [people["der"].serial_number, people["renewed"].serial_number])


def test_unreadable_folder_is_transient(tmp_path: Path, folder: Path,
                                        people: dict[str, x509.Certificate]) -> None:
    missing = FolderDirectory(tmp_path / "absent")
    with pytest.raises(DirectoryUnavailable) as info:
        missing.lookup("jean.dupont@medical59.apicrypt.org")
    assert info.value.reply.code == 451  # RFC 3463 4.4.3: directory server failure
    assert "jean" not in str(info.value)
    shutil.copytree(folder, tmp_path / "absent")
    missing.reload()
    assert missing.lookup("jean.dupont@medical59.apicrypt.org") == [people["multi"]]

    # A folder that disappears keeps its last good index; reload says why it failed. A
    # certificate read before is still served; one never read is "try again later" (451),
    # never "no certificate" (which would bounce the message).
    directory = FolderDirectory(folder)
    assert directory.lookup("jean.dupont@medical59.apicrypt.org") == [people["multi"]]
    shutil.rmtree(folder)
    with pytest.raises(DirectoryUnavailable):
        directory.reload()
    assert directory.lookup("jean.dupont@medical59.apicrypt.org") == [people["multi"]]
    with pytest.raises(DirectoryUnavailable):
        directory.lookup("labo@labo59.apicrypt.org")


def test_email_addresses(people: dict[str, x509.Certificate]) -> None:
    assert email_addresses(people["multi"]) == {
        "jean.dupont@medical59.apicrypt.org", "secretariat@medical59.apicrypt.org"}
    assert email_addresses(people["subject_only"]) == {"labo@labo59.apicrypt.org"}
    assert email_addresses(people["no_address"]) == frozenset()


def test_static_directory(people: dict[str, x509.Certificate]) -> None:
    directory: CertificateDirectory = StaticDirectory([people["multi"], people["der"]])
    assert directory.lookup("SECRETARIAT@medical59.apicrypt.org") == [people["multi"]]
    assert directory.lookup("x@y.org") == []


def test_devpki_directories(tmp_path: Path) -> None:
    config = init_pki(tmp_path / "pki")
    api = FolderDirectory(config.parent / "apicrypt" / "users")
    mss = FolderDirectory(config.parent / "mssante" / "users")
    assert api.skipped == () and mss.skipped == ()
    assert api.addresses == {"jean.dupont@medical59.apicrypt.org",
                             "labo.biolille@labo59.apicrypt.org",
                             "revoque@medical59.apicrypt.org"}
    assert len(mss.lookup("Marie.Curie@hopital-test.mssante.fr")) == 1
    assert mss.lookup("jean.dupont@medical59.apicrypt.org") == []


@given(st.text())
def test_normalise_address_never_raises(value: str) -> None:
    normalised = normalise_address(value)
    assert normalise_address(normalised) == normalised


def test_a_reload_reads_again_only_the_files_that_changed(
        tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """70,000 users: a reload must not parse 70,000 certificates again (nor keep two full
    copies: the unchanged files' records are shared)."""
    from gateway.smime import directory as module

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    first = FolderDirectory(copy)
    parsed: list[int] = []
    real = module._parse

    def counting(data: bytes) -> list[x509.Certificate]:
        parsed.append(len(data))
        return real(data)

    monkeypatch.setattr(module, "_parse", counting)
    second = FolderDirectory(copy)  # what a reload builds (a new runtime)
    assert parsed == [] and second.addresses == first.addresses
    victim = sorted(copy.glob("*.pem"))[0]
    victim.write_bytes(victim.read_bytes() + b"\n")  # changed: size and time
    third = FolderDirectory(copy)
    assert len(parsed) == 1 and third.addresses == first.addresses


def test_a_first_index_parsed_by_processes_is_the_same(
        tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """70,000 certificates are parsed by forked processes at start: the index they give is the
    one a single process gives (addresses, places, what was left out and why)."""
    from gateway.smime import directory as module

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    alone = module._build_index(copy, parallel_files=10**9)
    module._LAST.clear()
    forked: list[int] = []
    real = module._parse_in_processes

    def watching(wanted: list[module._Wanted]) -> dict[str, module._FileRecord]:
        forked.append(len(wanted))
        return real(wanted)

    monkeypatch.setattr(module, "_parse_in_processes", watching)
    together = module._build_index(copy, parallel_files=1)
    assert forked == [len([p for p in copy.iterdir() if p.suffix.lower() in module.SUFFIXES])]
    assert together.by_address == alone.by_address
    assert together.skipped == alone.skipped and together.certificates == alone.certificates
