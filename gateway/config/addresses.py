"""The one rule for e-mail addresses and domain patterns, used by the configuration and routing.

Rule kept here: an address or a domain is judged once, the same way wherever it comes from (a
configuration key, an envelope, a certificate): the configuration cannot accept what routing
would refuse, nor map a look-alike onto a configured name.

An address is normalised strictly: one level of ``<>``, no source route, no ``%`` or ``!``
(old relay hacks), no quoted local part, exactly one ``@``, no empty part, no whitespace or
control character, no address literal, no trailing dot; the local part is lower-cased (both
networks treat addresses case-insensitively), the domain is lower-cased and IDN labels become
A-labels with the stdlib ``idna`` codec -- only labels already in their canonical form, so that a
look-alike (full-width letters, ``ß``...) cannot be mapped onto a configured domain by
normalisation. 8-bit characters are allowed in the domain only.

A domain pattern is ``example.org`` (that domain exactly) or ``*.example.org`` (any subdomain,
not ``example.org`` itself); both name fully qualified domains.

Pure: no I/O. ``AddressError`` carries the reason, written for the operator (no address in it).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Iterable
from typing import Any

from gateway import errors
from gateway.memo import Memo

MAX_ADDRESS = 254  # RFC 5321 path (256) minus the angle brackets
MAX_DOMAIN = 253
MAX_LABEL = 63
# RFC 5322 atext minus "%" and "!" (source-routing hacks of old relays), plus "." for dot-atoms.
_LOCAL_CHARS = frozenset(string.ascii_letters + string.digits + "#$&'*+-/=?^_`{|}~.")
_LDH = frozenset(string.ascii_lowercase + string.digits + "-")
_SPECIALS = frozenset('<>(),;:\\"')


class AddressError(ValueError):
    """Why an address, a domain or a pattern is refused (no address in the text)."""


def _a_label(label: str) -> str:
    """One domain label as a lower-case A-label; refuses anything not canonical."""
    if not label:
        raise AddressError("empty domain label")
    if label.isascii():
        result = label.lower()
        if result.startswith("xn--"):
            try:  # an A-label given as such must decode and re-encode to itself
                unicode = result.encode("ascii").decode("idna")
                if unicode.encode("idna").decode("ascii") != result:
                    raise AddressError("non-canonical A-label")
            except UnicodeError:
                raise AddressError("invalid A-label") from None
    else:
        lowered = label.lower()
        try:
            result = lowered.encode("idna").decode("ascii").lower()
            back = result.encode("ascii").decode("idna")
        except UnicodeError:
            raise AddressError("invalid IDN label") from None
        # Nameprep maps full-width letters, "ß", compatibility forms... onto other labels: a
        # label that does not survive the round trip is a look-alike, not a name.
        if back != lowered or not result.startswith("xn--"):
            raise AddressError("non-canonical IDN label")
    if not 0 < len(result) <= MAX_LABEL or not set(result) <= _LDH:
        raise AddressError("invalid domain label")
    if result.startswith("-") or result.endswith("-"):
        raise AddressError("invalid domain label")
    return result


def domain(text: str, *, fqdn: bool = True) -> str:
    """A domain (or, with ``fqdn=False``, a host name such as ``localhost``), normalised."""
    if not isinstance(text, str):
        raise AddressError("not a string")
    if not text:
        raise AddressError("empty domain")
    if text.startswith("["):
        raise AddressError("address literal")
    if text.endswith("."):
        raise AddressError("trailing dot in domain")
    if any(c.isspace() for c in text):
        raise AddressError("whitespace in domain")
    labels = [_a_label(label) for label in text.split(".")]
    if fqdn and len(labels) < 2:
        raise AddressError("domain is not fully qualified")
    if labels[-1].isdigit():
        raise AddressError("numeric top-level label")
    result = ".".join(labels)
    if len(result) > MAX_DOMAIN:
        raise AddressError("domain too long")
    return result


def domain_pattern(text: str) -> str:
    """``example.org`` or ``*.example.org``, normalised; ``*`` only as the whole first label."""
    if not isinstance(text, str):
        raise AddressError("not a string")
    if "@" in text:
        raise AddressError("contains '@' (a domain is expected)")
    star = text.startswith("*.")
    rest = text[2:] if star else text
    if "*" in rest:
        raise AddressError("'*' is allowed only as the whole leftmost label")
    normalised = domain(rest)
    return "*." + normalised if star else normalised


def _local(local: str) -> str:
    if not local:
        raise AddressError("empty local part")
    if local.startswith('"'):
        raise AddressError("quoted local part")
    if not local.isascii():
        raise AddressError("8-bit local part")
    if "%" in local or "!" in local:
        raise AddressError("relay hack in local part")
    if not set(local) <= _LOCAL_CHARS:
        raise AddressError("invalid character in local part")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise AddressError("invalid dots in local part")
    return local.lower()


# The common case, judged at once (a directory indexes tens of thousands of addresses): an
# ASCII dot-atom local part of the allowed characters and LDH labels, none an A-label ("xn--"
# needs the canonical check), no numeric top-level label. What it accepts, the full rule
# accepts with the same result (tests/test_config.py checks it on random addresses).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SIMPLE = re.compile(rf"[A-Za-z0-9#$&'*+/=?^_`{{|}}~-]+(?:\.[A-Za-z0-9#$&'*+/=?^_`{{|}}~-]+)*"
                     rf"@(?:{_LABEL}\.)+{_LABEL}")


def _simple(value: str) -> str | None:
    if len(value) > MAX_ADDRESS or _SIMPLE.fullmatch(value) is None:
        return None
    lowered = value.lower()
    dom = lowered.rpartition("@")[2]
    if "xn--" in dom or dom.rpartition(".")[2].isdigit() or len(dom) > MAX_DOMAIN:
        return None
    return lowered


def address(raw: str) -> str:
    """The canonical form of an address; ``AddressError`` if it is not acceptable."""
    if not isinstance(raw, str):
        raise AddressError("not a string")
    fast = _simple(raw)
    if fast is not None:
        return fast
    value = raw
    if value.startswith("<") and value.endswith(">") and len(value) >= 2:
        value = value[1:-1]
    if not value:
        raise AddressError("null address")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise AddressError("whitespace or control character")
    if value.startswith("@"):
        raise AddressError("source route")
    if value.startswith('"'):
        raise AddressError("quoted local part")
    if value.count("@") != 1:
        raise AddressError("expected exactly one @")
    if "[" in value or "]" in value:
        raise AddressError("address literal")
    if any(c in _SPECIALS for c in value):
        raise AddressError("forbidden character")
    local, _, dom = value.partition("@")
    result = f"{_local(local)}@{domain(dom)}"
    if len(result) > MAX_ADDRESS:
        raise AddressError("address too long")
    return result


# Accepted envelope addresses and their canonical form (a pure function: bounded memo).
_NORMALISED: Memo[str, str] = Memo(4096)


def normalise_address(raw: str, *, sender: bool = False) -> str:
    """The canonical form of an envelope address, or ``RecipientRefused`` (``SenderRefused``
    with ``sender=True``) with the reply ``553 5.1.3`` (``5.1.7``) if it is not acceptable.
    """
    cached = _NORMALISED.get(raw) if isinstance(raw, str) else None
    if cached is not None:
        return cached
    try:
        result = address(raw)
    except AddressError as exc:
        if sender:
            raise errors.SenderRefused(f"sender address refused: {exc}",
                                       reply=errors.MALFORMED_SENDER) from None
        raise errors.RecipientRefused(f"recipient address refused: {exc}",
                                      reply=errors.MALFORMED_RECIPIENT) from None
    if len(raw) <= MAX_ADDRESS:  # accepted addresses only; the same few recur all day
        _NORMALISED.put(raw, result)
    return result


def lookup_key(raw: str) -> str:
    """The key to look an address up by (a certificate's, a directory's): the canonical form,
    or, for an address this rule refuses, its lower-cased text -- which matches no canonical
    key, so such a certificate is never found for a valid address. Never raises."""
    try:
        return address(raw.strip())
    except AddressError:
        return raw.strip().lower()


def checked(judge: Callable[[Any], str], value: object) -> tuple[str | None, str | None]:
    """``(normalised, None)`` or ``(None, reason)``: a judge of this module that never raises."""
    try:
        return judge(value), None
    except AddressError as exc:
        return None, str(exc)


def domain_matches(pattern: str, dom: str) -> bool:
    """``example.org`` matches itself only; ``*.example.org`` any subdomain, not itself."""
    if pattern.startswith("*."):
        return dom.endswith(pattern[1:]) and len(dom) > len(pattern) - 1
    return dom == pattern


def patterns_overlap(a: str, b: str) -> bool:
    """Could one domain match both normalised patterns?"""
    wild_a, wild_b = a.startswith("*."), b.startswith("*.")
    base_a, base_b = a.removeprefix("*."), b.removeprefix("*.")
    if wild_a and wild_b:
        return base_a == base_b or base_a.endswith("." + base_b) or base_b.endswith("." + base_a)
    if wild_a:
        return domain_matches(a, b)
    if wild_b:
        return domain_matches(b, a)
    return a == b


class DomainSet:
    """Normalised domain patterns, indexed: exact domains in one set, the bases of ``*.``
    patterns in another. A lookup costs one probe per label of the domain, whatever the number
    of patterns (the MSSanté list of the trust space holds thousands)."""

    __slots__ = ("_exact", "_wild")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact, wild = set(), set()
        for pattern in patterns:
            if pattern.startswith("*."):
                wild.add(pattern[2:])
            else:
                exact.add(pattern)
        self._exact, self._wild = frozenset(exact), frozenset(wild)

    def __len__(self) -> int:
        return len(self._exact) + len(self._wild)

    def matches(self, dom: str) -> bool:
        """The same answer as ``any(domain_matches(p, dom) for p in patterns)``."""
        if dom in self._exact:
            return True
        rest = dom
        while "." in rest:
            rest = rest.split(".", 1)[1]
            if rest in self._wild:
                return True
        return False

    def owns(self, normalised: str) -> bool:
        """Is the normalised address inside these patterns?"""
        return self.matches(normalised.rpartition("@")[2])


@functools.lru_cache(maxsize=16)
def _domain_set(patterns: tuple[str, ...]) -> DomainSet:
    return DomainSet(patterns)


def in_domains(normalised: str, patterns: tuple[str, ...]) -> bool:
    """Is the normalised address inside one of the normalised domain patterns?"""
    return _domain_set(patterns).owns(normalised)
