"""The recipients' certificates, found by e-mail address (DESIGN §3).

Rule kept here: the directory only *finds* certificates; it does not judge them. Validity,
revocation and key usage are checked by the caller against the destination network's trust
store, so that a directory backend (a folder today, LDAP or DNS later) can never make an
untrusted certificate usable. A backend that cannot be read raises ``DirectoryUnavailable``
(``451 4.4.3``: the sender retries), never an empty answer that would bounce the message.

``FolderDirectory`` reads every ``*.pem``, ``*.crt`` and ``*.cer`` file of one folder (PEM with
one or more certificates, or DER) once, at construction and on ``reload()``, and keeps where
each address's certificates are (not the certificates: they are parsed again on first use,
into a bounded cache, so a 70,000-user folder does not sit in every worker). Certificates are
indexed under every address they hold: rfc822Name subject alternative names and the
emailAddress attribute of the subject DN. Addresses are compared case-insensitively on the whole
address (local part included: neither network has case-sensitive mailboxes), with IDN domains
in their A-label form. CA certificates and files that do not parse are left out and listed in
``skipped`` (file name and reason, for the log; never their content).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.config.addresses import lookup_key
from gateway.errors import DirectoryUnavailable, MalformedError
from gateway.memo import Memo
from gateway.smime import trust

SUFFIXES = frozenset({".pem", ".crt", ".cer"})
MAX_FILE_BYTES = 1 << 20  # a certificate file larger than this is not a certificate file


class CertificateDirectory(Protocol):
    """Where the recipients' certificates of one network are found."""

    def lookup(self, address: str) -> list[x509.Certificate]:
        """Every certificate that names ``address`` (possibly none).

        Raises ``DirectoryUnavailable`` when the backend cannot be read.
        """
        ...


def normalise_address(address: str) -> str:
    """The key a certificate's address is filed and looked up under: the one address rule's
    canonical form (``gateway.config.addresses``), or for an address it refuses, the
    lower-cased text, which no valid address matches. Never raises."""
    return lookup_key(address)


def email_addresses(cert: x509.Certificate) -> frozenset[str]:
    """The certificate's addresses as the trust store judges them (``trust.email_addresses``:
    the rfc822Name SANs, the DN emailAddress only without them), so the directory files a
    certificate under exactly the identities a signature by it would prove."""
    try:
        return trust.email_addresses(cert, remember=False)
    except MalformedError:
        raise ValueError("malformed certificate extensions") from None


def _parse(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


@dataclass(frozen=True)
class Skipped:
    """A file (or a certificate in it) left out of the index, and why."""

    file: str
    reason: str


@dataclass(frozen=True)
class _Index:
    # address -> where its certificates are: (file, place of the certificate in the file)
    by_address: dict[str, tuple[tuple[str, int], ...]]
    skipped: tuple[Skipped, ...]
    certificates: int
    # what each file held when it was read, by its size and modification time: a reload
    # reads again only the files that changed
    files: dict[str, _FileRecord]


class _FileRecord(NamedTuple):  # (a tuple: 70,000 of them stay small)
    stamp: tuple[int, int]  # (size, mtime_ns)
    certificates: tuple[tuple[int, tuple[str, ...]], ...]  # (place in the file, addresses)
    skipped: tuple[Skipped, ...]


# The last index of each folder (a reload builds a new runtime, hence a new directory): files
# unchanged since are not parsed again, and both indexes share their records.
_LAST: dict[str, _Index] = {}


# A first index of at least this many files to parse is parsed by a few forked processes
# (parsing holds the GIL): 70,000 certificates take seconds on one core. Never at a reload,
# which parses only what changed, and runs beside other threads.
PARALLEL_FILES = 8000
_MAX_PARSERS = 4


def _build_index(folder: Path, *, parallel_files: int | None = None) -> _Index:
    """Read the folder and keep only where each address's certificates are (file and place):
    the certificates themselves are parsed again on first use and kept in a bounded cache, so
    that tens of thousands of them do not live in every worker. OSError on the folder itself
    propagates (the caller decides)."""
    with os.scandir(folder) as listing:  # (scandir: the file type without a stat call)
        entries = sorted((e for e in listing
                          if os.path.splitext(e.name)[1].lower() in SUFFIXES),
                         key=lambda e: e.name)
    previous = _LAST.get(str(folder))
    known = previous.files if previous is not None else {}
    skipped: list[Skipped] = []
    stamps: list[tuple[os.DirEntry[str], tuple[int, int]]] = []
    for entry in entries:
        try:
            info = entry.stat()
        except OSError as exc:
            skipped.append(Skipped(entry.name, f"cannot read: {exc.strerror}"))
            continue
        stamps.append((entry, (info.st_size, info.st_mtime_ns)))
    wanted = [(e.path, e.name, stamp, e.is_file()) for e, stamp in stamps
              if (known.get(e.path) is None or known[e.path].stamp != stamp)]
    threshold = PARALLEL_FILES if parallel_files is None else parallel_files
    # tens of thousands of small tuples and no cycle among them: the cyclic collector would
    # walk the growing heap again and again for nothing
    collecting = gc.isenabled()
    gc.disable()
    try:
        parsed: dict[str, _FileRecord] | None = None
        if previous is None and len(wanted) >= threshold and (os.cpu_count() or 1) > 1:
            with contextlib.suppress(OSError, BrokenProcessPool):  # no fork here: one process
                parsed = _parse_in_processes(wanted)
        if parsed is None:
            parsed = {path: _index_file(path, name, stamp, regular)
                      for path, name, stamp, regular in wanted}
        by_address: dict[str, list[tuple[str, int]]] = {}
        files: dict[str, _FileRecord] = {}
        count = 0
        for entry, _ in stamps:
            record = parsed.get(entry.path) or known[entry.path]
            files[entry.path] = record
            skipped.extend(record.skipped)
            count += len(record.certificates)
            for place, addresses in record.certificates:
                for address in addresses:
                    by_address.setdefault(address, []).append((entry.path, place))
    finally:
        if collecting:
            gc.enable()
    index = _Index(
        by_address={a: tuple(where) for a, where in by_address.items()},
        skipped=tuple(skipped),
        certificates=count,
        files=files,
    )
    _LAST[str(folder)] = index
    return index


_Wanted = tuple[str, str, tuple[int, int], bool]  # path, name, stamp, is a regular file


def _parse_chunk(chunk: list[_Wanted]) -> list[tuple[str, _FileRecord]]:
    return [(path, _index_file(path, name, stamp, regular))
            for path, name, stamp, regular in chunk]


def _parse_in_processes(wanted: list[_Wanted]) -> dict[str, _FileRecord]:
    """The same records, parsed by forked processes (one per core, at most four)."""
    workers = min(os.cpu_count() or 1, _MAX_PARSERS)
    size = -(-len(wanted) // (workers * 4))  # a few chunks a process: even loads
    chunks = [wanted[i:i + size] for i in range(0, len(wanted), size)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return {path: record for part in pool.map(_parse_chunk, chunks)
                for path, record in part}


def _index_file(path: str, name: str, stamp: tuple[int, int], regular: bool) -> _FileRecord:
    """What one file holds: its certificates' places and addresses, and what was left out."""
    if not regular:
        return _FileRecord(stamp, (), ())
    if stamp[0] > MAX_FILE_BYTES:
        return _FileRecord(stamp, (), (Skipped(name, "file too large"),))
    try:
        with open(path, "rb") as file:
            content = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return _FileRecord(stamp, (), (Skipped(name, f"cannot read: {exc.strerror}"),))
    if len(content) > MAX_FILE_BYTES:
        return _FileRecord(stamp, (), (Skipped(name, "file too large"),))
    try:
        certs = _parse(content)
    except ValueError:
        return _FileRecord(stamp, (), (Skipped(name, "not a PEM or DER certificate"),))
    found: list[tuple[int, tuple[str, ...]]] = []
    skipped: list[Skipped] = []
    for place, cert in enumerate(certs):
        try:
            ca, addresses = trust.ca_and_addresses(cert)
        except MalformedError:  # a malformed extension shows up only when read
            skipped.append(Skipped(name, "malformed certificate extensions"))
            continue
        if ca:
            skipped.append(Skipped(name, "CA certificate"))
            continue
        if not addresses:
            skipped.append(Skipped(name, "no e-mail address in the certificate"))
            continue
        found.append((place, tuple(addresses)))
    return _FileRecord(stamp, tuple(found), tuple(skipped))


_CACHE_SIZE = 4096  # parsed certificates kept per directory (bounded: cleared when full)


class FolderDirectory:
    """A folder of certificate files, indexed by e-mail address; certificates parsed on use."""

    def __init__(self, path: Path, *, cache_size: int = _CACHE_SIZE) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._index: _Index | None = None
        self._error: str | None = None
        self._parsed: Memo[tuple[str, int], x509.Certificate] = Memo(cache_size)
        # If the folder cannot be read, lookups raise until a reload succeeds: senders retry.
        with contextlib.suppress(DirectoryUnavailable):
            self.reload()

    def reload(self) -> None:
        """Re-read the folder. If it cannot be read, keep the previous index and raise."""
        with self._lock:
            try:
                index = _build_index(self.path)
            except OSError as exc:
                self._error = f"certificate folder unreadable: {exc.strerror}"
                raise DirectoryUnavailable(self._error) from None
            self._index = index  # one assignment: a lookup sees the old or the new index
            self._parsed = Memo(self._parsed.size)  # files may have changed
            self._error = None

    def lookup(self, address: str) -> list[x509.Certificate]:
        index = self._index
        if index is None:
            raise DirectoryUnavailable(self._error or "certificate folder not loaded")
        found: dict[bytes, x509.Certificate] = {}
        places = index.by_address.get(normalise_address(address), ())
        for where in places:
            cert = self._certificate(where)
            if cert is not None:
                found.setdefault(cert.fingerprint(hashes.SHA256()), cert)
        if places and not found:
            # the index knows certificates that cannot be read now (files being replaced, a
            # folder gone): the sender retries, the recipient is not told "no certificate"
            raise DirectoryUnavailable("certificate file unreadable")
        return list(found.values())

    def _certificate(self, where: tuple[str, int]) -> x509.Certificate | None:
        parsed = self._parsed  # (a reload swaps it)
        cert = parsed.get(where)
        if cert is None:
            try:
                certs = _parse(Path(where[0]).read_bytes())
            except (OSError, ValueError):  # changed or gone since the index: until a reload
                return None
            if where[1] >= len(certs):
                return None
            cert = certs[where[1]]
            parsed.put(where, cert)
        return cert

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return self._index.skipped if self._index else ()

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(self._index.by_address) if self._index else frozenset()

    def __len__(self) -> int:
        """The number of certificates indexed."""
        return self._index.certificates if self._index else 0


class StaticDirectory:
    """An in-memory directory (tests, the demo): certificates given at construction."""

    def __init__(self, certificates: Iterable[x509.Certificate]) -> None:
        self._by_address: dict[str, list[x509.Certificate]] = {}
        for cert in certificates:
            for address in email_addresses(cert):
                self._by_address.setdefault(address, []).append(cert)

    def lookup(self, address: str) -> list[x509.Certificate]:
        return list(self._by_address.get(normalise_address(address), ()))
