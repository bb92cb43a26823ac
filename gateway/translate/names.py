"""Who a From display name claims to be, and when the re-sealed message may repeat it.

Rule kept here: a display name is the sender's free text; only the address was verified. The
gateway writes the name only when it cannot be read as somebody else: not an address (judged
as a mail client shows it: RFC 2047 words decoded, compatibility characters folded), and not
the name of another known person (an address-book entry's ``name`` or the name in one of its
certificates) unless the signer is that person.
"""

from __future__ import annotations

import email.header
import email.utils
import unicodedata
from collections.abc import Iterable, Mapping

from cryptography import x509

# "@" and its look-alikes (full-width, small): a name holding one reads as an address.
_AT_SIGNS = frozenset("@\uff20\ufe6b")
# A known name of one word ("Labo", "Secrétariat") is too common to judge others by.
_MIN_NAME_WORDS = 2


class KnownNames:
    """Known persons' names (as word sets) and their addresses (lookup keys), filed under
    each of their words so that a display name is judged against a handful, not all."""

    def __init__(self, people: Iterable[tuple[Iterable[str], frozenset[str]]] = ()) -> None:
        """``people`` gives each person's names and addresses."""
        self._addresses: dict[frozenset[str], frozenset[str]] = {}
        self._by_word: dict[str, list[frozenset[str]]] = {}
        for names, addresses in people:
            for name in names:
                words = name_words(name)
                if len(words) < _MIN_NAME_WORDS:
                    continue
                if words not in self._addresses:
                    for word in words:
                        self._by_word.setdefault(word, []).append(words)
                self._addresses[words] = self._addresses.get(words, frozenset()) | addresses

    def __len__(self) -> int:
        return len(self._addresses)

    def claimed(self, name: str) -> Mapping[frozenset[str], frozenset[str]]:
        """The known persons whose every name word is in ``name``, with their addresses."""
        words = name_words(name)
        found: dict[frozenset[str], frozenset[str]] = {}
        for word in words:
            for person in self._by_word.get(word, ()):
                if person <= words:
                    found[person] = self._addresses[person]
        return found


def header_text(value: str) -> str:
    """A header value as a reader's client shows it: raw 8-bit octets (which the parser kept as
    latin-1) read as UTF-8 (RFC 6532), else as the legacy cp1252."""
    if value.isascii():
        return value
    octets = value.encode("latin-1", "replace")
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        return octets.decode("cp1252", "replace")


def display_name(value: str) -> str:
    """The display name of a ``Name <addr>`` From, unquoted and with its RFC 2047 encoded
    words decoded (what a mail client will show); empty when there is none."""
    if "<" not in value:
        return ""
    name = header_text(value[: value.rfind("<")].strip())
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1]
    try:
        name = str(email.header.make_header(email.header.decode_header(name)))
    except (ValueError, LookupError, UnicodeError):  # undecodable words: no name at all
        return ""
    return name.strip()


def name_words(name: str) -> frozenset[str]:
    """The words of a name as a reader matches them: compatibility-folded, without accents
    or case, split on anything that is not a letter or digit ("CURIE, Marie" = "Marie Curie")."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", name))
    bare = "".join(c for c in folded if not unicodedata.combining(c)).casefold()
    return frozenset("".join(c if c.isalnum() else " " for c in bare).split())


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The common names of a certificate's subject (how its holder is called)."""
    names = []
    for attribute in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        value = attribute.value
        names.append(value if isinstance(value, str) else value.decode("utf-8", "replace"))
    return names


def claims_another(name: str, signer_addresses: frozenset[str], known: KnownNames) -> bool:
    """True when ``name`` contains every word of a known person's name and the signer is not
    that person ("Dr Marie CURIE" signed by Jean)."""
    return any(not (addresses & signer_addresses)
               for addresses in known.claimed(name).values())


def display(name: str, address: str, signer_addresses: frozenset[str] = frozenset(),
            known: KnownNames | None = None) -> str:
    """The From value written: ``Name <address>``, or ``<address>`` alone when the name could
    be read as another address ("boss@corp" <eve@corp>) or another known person."""
    folded = unicodedata.normalize("NFKC", name)
    if (not name or "<" in folded or not name.isprintable()
            or any(c in _AT_SIGNS for c in name + folded)
            or (known and claims_another(name, signer_addresses, known))):
        return f"<{address}>"
    return email.utils.formataddr((name, address), charset="utf-8")
