"""The checker that reads a configuration's tables: every problem collected, each under its key.

Rule kept here: reading never stops at the first problem. Each typed reader (``string``,
``integer``, ``path``, ``certificates``...) either returns a usable value or records a
``ConfigProblem`` naming the file and the dotted key and returns the caller's default, so that
``check-config`` prints every problem at once. Warnings are things worth a log line (a secret
readable by others, a certificate near its expiry, a stale CRL), not worth refusing.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from cryptography import x509

from gateway.config.files import (
    PrivateKey,
    parse_certificates,
    parse_crls,
    parse_private_key,
    same_public_key,
)
from gateway.config.settings import EXPIRY_WARNING
from gateway.errors import ConfigProblem

T = TypeVar("T")

_Kind = Literal["file", "dir"]


class Checker:
    """Collects problems and warnings while the file is read; never stops at the first."""

    def __init__(self, file: Path, now: dt.datetime) -> None:
        self.file = file
        self.base = file.parent
        self.now = now
        self.problems: list[ConfigProblem] = []
        self.warnings: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(str(self.file), key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.file}: {key}: {message}")

    # --- structure -------------------------------------------------------------------------

    def table(self, parent: Mapping[str, Any], name: str, key: str, *,
              required: bool) -> dict[str, Any] | None:
        value = parent.get(name)
        if value is None:
            if required:
                self.problem(key, "missing required table")
            return None
        if not isinstance(value, dict):
            self.problem(key, "must be a table")
            return None
        return value

    def unknown_keys(self, table: Mapping[str, Any], allowed: Iterable[str], prefix: str) -> None:
        known = sorted(set(allowed))
        for name in table:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.7)
                hint = f" (did you mean {close[0]}?)" if close else ""
                self.problem(join(prefix, name), f"unknown key{hint}")

    def _get(self, table: Mapping[str, Any], name: str, key: str,
             what: str, default: T, *, required: bool,
             accept: Callable[[Any], bool]) -> Any:
        if name not in table:
            if required:
                self.problem(key, "missing required key")
            return default
        value = table[name]
        if not accept(value):
            self.problem(key, f"must be {what}")
            return default
        return value

    def string(self, table: Mapping[str, Any], name: str, prefix: str, default: str = "", *,
               required: bool = False) -> str:
        value: str = self._get(table, name, join(prefix, name), "a string", default,
                               required=required, accept=lambda v: isinstance(v, str))
        return value

    def integer(self, table: Mapping[str, Any], name: str, prefix: str, default: int, *,
                minimum: int = 1, maximum: int | None = None) -> int:
        key = join(prefix, name)
        value: int = self._get(
            table, name, key, "an integer", default, required=False,
            accept=lambda v: isinstance(v, int) and not isinstance(v, bool))
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
            self.problem(key, f"must be {bounds}")
            return default
        return value

    def seconds(self, table: Mapping[str, Any], name: str, prefix: str, default: float) -> float:
        key = join(prefix, name)
        value = self._get(
            table, name, key, "a number of seconds", default, required=False,
            accept=lambda v: isinstance(v, int | float) and not isinstance(v, bool))
        if not 0 < value < float("inf"):
            self.problem(key, "must be a positive number of seconds")
            return default
        return float(value)

    def boolean(self, table: Mapping[str, Any], name: str, prefix: str, default: bool) -> bool:
        value: bool = self._get(table, name, join(prefix, name), "true or false",
                                default, required=False, accept=lambda v: isinstance(v, bool))
        return value

    def string_list(self, table: Mapping[str, Any], name: str, prefix: str, *,
                    required: bool = False, single: bool = False) -> list[tuple[str, str]]:
        """(key, value) pairs of a list of strings (or a single string if ``single``)."""
        key = join(prefix, name)
        if name not in table:
            if required:
                self.problem(key, "missing required key")
            return []
        value = table[name]
        if single and isinstance(value, str):
            return [(key, value)]
        what = "a string or a list of strings" if single else "a list of strings"
        if not isinstance(value, list):
            self.problem(key, f"must be {what}")
            return []
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append((f"{key}[{i}]", item))
            else:
                self.problem(f"{key}[{i}]", "must be a string")
        return out

    # --- files -----------------------------------------------------------------------------

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = self.base / path
        return Path(os.path.normpath(path))

    def check_path(self, key: str, path: Path, kind: _Kind) -> bool:
        try:
            path.stat()
        except FileNotFoundError:
            self.problem(key, f"{'folder' if kind == 'dir' else 'file'} not found: {path}")
            return False
        except OSError as exc:
            self.problem(key, f"cannot access {path}: {exc.strerror}")
            return False
        if kind == "dir":
            if not path.is_dir():
                self.problem(key, f"not a folder: {path}")
                return False
            if not os.access(path, os.R_OK | os.X_OK):
                self.problem(key, f"folder not readable: {path}")
                return False
            return True
        if not path.is_file():
            self.problem(key, f"not a regular file: {path}")
            return False
        return True

    def path(self, table: Mapping[str, Any], name: str, prefix: str, *, kind: _Kind = "file",
             required: bool = False) -> Path | None:
        key = join(prefix, name)
        if name not in table:
            if required:
                self.problem(key, "missing required key")
            return None
        value = table[name]
        if not isinstance(value, str) or not value:
            self.problem(key, "must be a path (a non-empty string)")
            return None
        path = self.resolve(value)
        self.check_path(key, path, kind)
        return path

    def read(self, key: str, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except OSError as exc:
            self.problem(key, f"cannot read {path}: {exc.strerror}")
            return None

    def certificates(self, key: str, path: Path | None) -> list[x509.Certificate] | None:
        if path is None or not path.is_file():
            return None  # already reported
        data = self.read(key, path)
        if data is None:
            return None
        try:
            return parse_certificates(data)
        except ValueError:
            self.problem(key, f"not a PEM or DER certificate: {path}")
            return None

    def private_key(self, key: str, path: Path | None) -> PrivateKey | None:
        if path is None or not path.is_file():
            return None
        data = self.read(key, path)
        if data is None:
            return None
        try:
            private = parse_private_key(data)
        except TypeError:
            self.problem(key, f"private key is encrypted (unencrypted PEM expected): {path}")
            return None
        except ValueError:
            self.problem(key, f"not an RSA or EC private key in PEM: {path}")
            return None
        self.secret_mode(key, path)
        return private

    def secret_mode(self, key: str, path: Path) -> None:
        """Warn when a file holding a secret can be read by others than its owner."""
        try:
            if path.stat().st_mode & 0o077:
                self.warn(key, f"{path} is readable by group or others (chmod 600)")
        except OSError:
            pass  # an unreadable file is reported where it is read

    def crls(self, key: str, path: Path) -> list[x509.CertificateRevocationList]:
        """Every CRL of the file (a bundle keeps all), warning for each one past nextUpdate."""
        if not path.is_file():
            return []
        data = self.read(key, path)
        if data is None:
            return []
        try:
            crls = parse_crls(data)
        except ValueError:
            self.problem(key, f"not a PEM or DER CRL: {path}")
            return []
        for crl in crls:
            next_update = crl.next_update_utc
            if next_update is not None and next_update < self.now:
                self.warn(key, f"CRL {path} is past its next update ({next_update:%Y-%m-%d})")
        return crls

    def validity(self, key: str, cert: x509.Certificate, what: str) -> None:
        if cert.not_valid_after_utc < self.now:
            self.problem(key, f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        elif cert.not_valid_before_utc > self.now:
            self.problem(key, f"{what} not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
        elif cert.not_valid_after_utc - self.now < EXPIRY_WARNING:
            self.warn(key, f"{what} expires on {cert.not_valid_after_utc:%Y-%m-%d}")

    def key_pair(self, prefix: str, cert_name: str, key_name: str, *, cert_path: Path | None,
                 key_path: Path | None, what: str) -> None:
        """Parse a certificate and its key, check they match and the certificate's dates."""
        certs = self.certificates(join(prefix, cert_name), cert_path)
        private = self.private_key(join(prefix, key_name), key_path)
        if certs:
            self.validity(join(prefix, cert_name), certs[0], what)
        if certs and private is not None and not same_public_key(certs[0], private):
            self.problem(join(prefix, key_name), f"does not match {prefix}.{cert_name}")


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
