"""CMS cases: the EnvelopedData of the outer layer and the SignedData inside it, made by OpenSSL
and then cut, lengthened, re-tagged or re-encoded at the DER level.

Rule kept here: a CMS structure that does not parse, or parses into something the gateway does
not accept as one layer, is a permanent refusal: malformed ``550 5.6.0``; not encrypted for the
gateway or with a refused algorithm ``550 5.7.5``; any reason the signature cannot be taken
(no signer, several, tampered, weak digest, outside the encryption) ``550 5.7.7``. Never a
``451`` (which would have the sender retry the same bytes forever), never a relay.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms

from tests.hostile.case import Case, message_case
from tests.hostile.world import CRLF, JEAN, LABO, World, crlf, openssl, text_entity

CATEGORY = "cms"
CASES: list[Case] = []
TEXT = text_entity("Compte rendu: patient stable.\n")
ENVELOPED_CT = b"application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"
SIGNED_CT = b"application/pkcs7-mime; smime-type=signed-data; name=smime.p7m"


def case(name: str, outcome: str, build: Callable[[World], bytes], **kw: Any) -> None:
    CASES.append(message_case(CATEGORY, name, outcome, build, **kw))


# --- a small DER tree, enough to cut and re-encode what OpenSSL wrote ------------------------

@dataclass
class Node:
    tag: int
    value: bytes | list[Node]

    def encode(self) -> bytes:
        body = (self.value if isinstance(self.value, bytes)
                else b"".join(child.encode() for child in self.value))
        return bytes([self.tag]) + length(len(body)) + body

    def __getitem__(self, index: int) -> Node:
        assert isinstance(self.value, list)
        return self.value[index]

    @property
    def children(self) -> list[Node]:
        assert isinstance(self.value, list)
        return self.value

    @property
    def octets(self) -> bytes:
        assert isinstance(self.value, bytes)
        return self.value


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def parse(der: bytes) -> Node:
    node, end = _parse(der, 0)
    assert end == len(der)
    return node


def _parse(der: bytes, pos: int) -> tuple[Node, int]:
    tag = der[pos]
    first = der[pos + 1]
    pos += 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        size = int.from_bytes(der[pos:pos + count], "big")
        pos += count
    end = pos + size
    if tag & 0x20:
        children = []
        while pos < end:
            child, pos = _parse(der, pos)
            children.append(child)
        return Node(tag, children), end
    return Node(tag, der[pos:end]), end


def oid(dotted: str) -> Node:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return Node(0x06, bytes(out))


def integer(value: bytes) -> Node:
    return Node(0x02, value)


# --- building messages ------------------------------------------------------------------------

def b64(der: bytes) -> bytes:
    return base64.encodebytes(der).replace(b"\n", CRLF)


def pkcs7_entity(der: bytes, ctype: bytes = ENVELOPED_CT) -> bytes:
    return (b"Content-Type: " + ctype + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + b64(der))


def outer(w: World, entity: bytes) -> bytes:
    """Message headers on top of an outer entity (no further sealing)."""
    return w.headers() + b"MIME-Version: 1.0\r\n" + entity


def env_der(w: World) -> bytes:
    """A genuine EnvelopedData (DER) of a genuine signed message, for the apicrypt gateway."""
    return w.once("cms-env-der", lambda w: w.encrypt_der(w.sign(TEXT)))


def env_tree(w: World) -> Node:
    return parse(env_der(w))


def mutated_env(mutate: Callable[[Node], None]) -> Callable[[World], bytes]:
    def build(w: World) -> bytes:
        tree = env_tree(w)
        mutate(tree)
        return outer(w, pkcs7_entity(tree.encode()))
    return build


def raw_env(cut: Callable[[bytes], bytes]) -> Callable[[World], bytes]:
    return lambda w: outer(w, pkcs7_entity(cut(env_der(w))))


def signed_der(w: World, signer: str = JEAN, *extra: str, key: str = "") -> bytes:
    """A genuine opaque SignedData (DER) of TEXT."""
    def make(w: World) -> bytes:
        s = w.signer(signer)
        return openssl("cms", "-sign", "-nodetach", "-binary", "-md", "sha256", "-outform", "DER",
                       "-signer", s.cert, "-inkey", s.key, *extra, data=TEXT)
    return w.once(f"cms-signed-{signer}-{key or '-'.join(extra)}", make)


def sealed_inner(entity: Callable[[World], bytes]) -> Callable[[World], bytes]:
    """``entity`` (an inner S/MIME layer) encrypted for the gateway under genuine headers."""
    return lambda w: w.headers() + w.encrypt(entity(w))


def mutated_signed(mutate: Callable[[Node], None]) -> Callable[[World], bytes]:
    def entity(w: World) -> bytes:
        tree = parse(signed_der(w))
        mutate(tree)
        return pkcs7_entity(tree.encode(), SIGNED_CT)
    return sealed_inner(entity)


# Paths in OpenSSL's DER (ContentInfo -> [0] -> the structure).
def env(tree: Node) -> Node:
    return tree[1][0]


def recipient_info(tree: Node) -> Node:
    return env(tree)[1][0]


def encrypted_content_info(tree: Node) -> Node:
    return env(tree)[2]


def sd(tree: Node) -> Node:
    return tree[1][0]


def signer_infos(tree: Node) -> Node:
    return sd(tree).children[-1]


def signer_info(tree: Node) -> Node:
    return signer_infos(tree)[0]


# --- the outer EnvelopedData: truncations and lengths -----------------------------------------

case("empty S/MIME body", "550 5.6.0", lambda w: outer(w, pkcs7_entity(b"")))
def _cut_to(keep: int) -> Callable[[bytes], bytes]:
    return lambda der: der[:keep]


for _keep in (1, 200):
    case(f"EnvelopedData cut to {_keep} octets", "550 5.6.0", raw_env(_cut_to(_keep)))
case("EnvelopedData cut in half", "550 5.6.0", raw_env(lambda d: d[: len(d) // 2]))
case("EnvelopedData without its last octet", "550 5.6.0", raw_env(lambda d: d[:-1]))


def _relength(delta: int) -> Callable[[bytes], bytes]:
    def cut(der: bytes) -> bytes:
        node = parse(der)
        body = b"".join(c.encode() for c in node.children)
        return bytes([node.tag]) + length(len(body) + delta) + body
    return cut


case("outer length one too long", "550 5.6.0", raw_env(_relength(1)))
# BER (which CMS allows for EnvelopedData) is read by the lenient fallback reader: lengths in
# more octets than needed are BER, and the envelope's version carries nothing that is trusted.
case("length in 9 octets (BER, not minimal)", "250 2.0.0", raw_env(
    lambda d: d[:1] + b"\x89" + b"\x00" * 7 + d[2:4] + d[4:]))
case("length of 4 GiB", "550 5.6.0", raw_env(lambda d: d[:1] + b"\x84\xff\xff\xff\xff" + d[4:]))
case("indefinite length without its end", "550 5.6.0", raw_env(lambda d: d[:1] + b"\x80" + d[4:]))
case("100 octets after the DER", "550 5.6.0", raw_env(lambda d: d + b"\x00" * 100))
case("outer SEQUENCE tagged as a SET", "550 5.6.0", raw_env(lambda d: b"\x31" + d[1:]))


def _content_type(dotted: str) -> Callable[[Node], None]:
    def mutate(tree: Node) -> None:
        tree.children[0] = oid(dotted)
    return mutate


# Not an EnvelopedData whatever the smime-type says: not encrypted for the gateway.
case("content type id-data", "550 5.7.5", mutated_env(_content_type("1.2.840.113549.1.7.1")))
case("content type signedData on an EnvelopedData", "550 5.7.5",
     mutated_env(_content_type("1.2.840.113549.1.7.2")))
case("unknown content type", "550 5.7.5", mutated_env(_content_type("1.2.3.4.5")))
# Invalid even in BER (X.690 8.19.2), but it decodes to the right OID: the lenient reader takes
# it, and what is trusted (the signature inside) is checked as usual.
case("OID with a padded arc", "250 2.0.0", mutated_env(
    lambda t: t.children.__setitem__(0, Node(0x06, b"\x2a\x86\x48\x80\x86\xf7\x0d\x01\x07\x03"))))
case("version as a 300-octet INTEGER", "250 2.0.0", mutated_env(
    lambda t: env(t).children.__setitem__(0, integer(b"\x01" + b"\x00" * 299))))


# --- recipients ---------------------------------------------------------------------------------

case("no recipient (empty SET)", "550 5.7.5", mutated_env(
    lambda t: env(t).children.__setitem__(1, Node(0x31, []))))


def _stranger(ri: Node) -> Node:
    """The recipient info with another serial number: for someone else."""
    clone = parse(ri.encode())
    clone[1].children[1] = integer(b"\x01\x02\x03\x04")
    return clone


case("only a recipient that is not the gateway", "550 5.7.5", mutated_env(
    lambda t: env(t).children.__setitem__(1, Node(0x31, [_stranger(recipient_info(t))]))))
case("300 strangers before the gateway", "250 2.0.0", mutated_env(
    lambda t: env(t).children.__setitem__(1, Node(0x31, [
        *[_stranger(recipient_info(t))] * 300, recipient_info(t)]))))
# After a CBC decryption, one reply for every failure (no padding or Bleichenbacher oracle):
# the key that did not unwrap goes on as a random key, the bad padding as garbage content.
case("encrypted key replaced by random octets", "550 5.7.0", mutated_env(
    lambda t: recipient_info(t).children.__setitem__(
        3, Node(0x04, bytes((i * 7 + 3) % 256 for i in range(256))))))
case("unknown key transport algorithm", "550 5.7.5", mutated_env(
    lambda t: recipient_info(t)[2].children.__setitem__(0, oid("1.2.3.4.5.6"))))
case("unknown content encryption algorithm", "550 5.7.5", mutated_env(
    lambda t: encrypted_content_info(t)[1].children.__setitem__(0, oid("1.2.3.4.5.7"))))
case("IV of 8 octets for AES", "550 5.6.0", mutated_env(
    lambda t: encrypted_content_info(t)[1].children.__setitem__(1, Node(0x04, b"\x00" * 8))))
# A decryption that fails answers like a wrong key (no padding oracle): 5.7.5.
def _ciphertext(change: Callable[[bytes], bytes]) -> Callable[[Node], None]:
    def mutate(tree: Node) -> None:
        info = encrypted_content_info(tree)
        info.children[2] = Node(0x80, change(info[2].octets))
    return mutate


def _drop_ciphertext(tree: Node) -> None:
    del encrypted_content_info(tree).children[2]


case("ciphertext not a whole number of blocks", "550 5.7.5", mutated_env(
    _ciphertext(lambda c: c[:-5])))
case("no encrypted content", "550 5.6.0", mutated_env(_drop_ciphertext))
# The penultimate block's last byte flipped: the padding byte of the last block is XORed with
# 0xFF, so it is > 16 and the padding is wrong every time (flipping the last block itself would
# make random padding, valid about once in 256 runs).
case("bad padding in the last block", "550 5.7.0", mutated_env(
    _ciphertext(lambda c: c[:-17] + bytes([c[-17] ^ 0xFF]) + c[-16:])))
case("good padding, garbage content: the same reply as bad padding", "550 5.7.0", mutated_env(
    _ciphertext(lambda c: c[:-33] + bytes([c[-33] ^ 0x01]) + c[-32:])))


# --- algorithms and shapes made by OpenSSL ----------------------------------------------------

def _encrypted(*args: str, network: str = "apicrypt") -> Callable[[World], bytes]:
    cipher, *extra = args
    return lambda w: w.headers() + w.encrypt(w.sign(TEXT), network, cipher=cipher, extra=extra)


case("3DES content encryption", "550 5.7.5", _encrypted("-des3"))
case("AES-128-CBC", "250 2.0.0", _encrypted("-aes-128-cbc"))
case("AES-256-GCM (AuthEnvelopedData)", "250 2.0.0", _encrypted("-aes-256-gcm"))
case("RSA-OAEP key transport", "250 2.0.0", lambda w: w.headers() + crlf(openssl(
    "cms", "-encrypt", "-aes-256-cbc", "-binary", "-outform", "SMIME", "-recip",
    w.pki.gateway_cert("apicrypt"), "-keyopt", "rsa_padding_mode:oaep", data=w.sign(TEXT))))
case("BER with indefinite lengths (streamed)", "250 2.0.0", _encrypted("-aes-256-cbc", "-stream"))
case("encrypted for the other network's gateway", "550 5.7.5", lambda w: w.headers() + w.encrypt(
    w.sign(TEXT), recipient=w.pki.gateway_cert("mssante")))
case("encrypted for the sender only", "550 5.7.5", lambda w: w.headers() + w.encrypt(
    w.sign(TEXT), recipient=w.pki.user_cert(JEAN)))


def _layers(n: int) -> Callable[[World], bytes]:
    def build(w: World) -> bytes:
        entity = w.sign(TEXT)
        for _ in range(n):
            entity = w.encrypt(entity)
        return w.headers() + entity
    return build


case("7 nested encryption layers", "550 5.6.0", _layers(7))
case("base64 with invalid characters", "550 5.6.0", lambda w: outer(w, pkcs7_entity(
    env_der(w)).replace(b"\r\n", b"\r\n!*#", 3)))
case("smime-type signed-data on an EnvelopedData", "550 5.6.0", lambda w: outer(w, pkcs7_entity(
    env_der(w), SIGNED_CT)))
case("certs-only outer layer", "550 5.7.5", lambda w: outer(w, pkcs7_entity(
    openssl("crl2pkcs7", "-nocrl", "-certfile", w.pki.user_cert(JEAN), "-outform", "DER",
            data=b""), b"application/pkcs7-mime; smime-type=certs-only; name=smime.p7c")))


def _compressed(w: World) -> bytes:
    info = cms.ContentInfo({"content_type": "compressed_data", "content": cms.CompressedData({
        "version": "v0", "compression_algorithm": {"algorithm": "zlib"},
        "encap_content_info": {"content_type": "data",
                               "content": zlib.compress(w.sign(TEXT))}})})
    return pkcs7_entity(info.dump(), b"application/pkcs7-mime; smime-type=compressed-data")


case("compressed-data inside the encryption", "550 5.6.0", sealed_inner(_compressed))


# --- the SignedData inside the encryption -----------------------------------------------------

case("no signer (empty signerInfos)", "550 5.7.7", mutated_signed(
    lambda t: sd(t).children.__setitem__(-1, Node(0x31, []))))
case("the same signer twice", "550 5.7.7", mutated_signed(
    lambda t: sd(t).children.__setitem__(-1, Node(0x31, [signer_info(t), signer_info(t)]))))
case("two signers", "550 5.7.7", sealed_inner(lambda w: w.sign(TEXT, signers=[LABO])))
case("signer certificate left out", "550 5.7.7", sealed_inner(
    lambda w: w.sign(TEXT, extra=["-nocerts"])))
case("SignedData version as a 300-octet INTEGER", "250 2.0.0", mutated_signed(
    lambda t: sd(t).children.__setitem__(0, integer(b"\x01" + b"\x00" * 299))))
case("signer serial as a 300-octet INTEGER", "550 5.7.7", mutated_signed(
    lambda t: signer_info(t)[1].children.__setitem__(1, integer(b"\x01" + b"\x00" * 299))))
case("signature value altered", "550 5.7.7", mutated_signed(
    lambda t: signer_info(t).children.__setitem__(-1, Node(
        0x04, bytes(b ^ 0x01 for b in signer_info(t)[-1].octets)))))
case("SignedData cut in half", "550 5.6.0", sealed_inner(lambda w: pkcs7_entity(
    signed_der(w)[: len(signed_der(w)) // 2], SIGNED_CT)))
case("SHA-1 digest", "550 5.7.7", lambda w: w.message(TEXT, md="sha1"))
case("RSA-PSS signature", "250 2.0.0", sealed_inner(lambda w: w.sign(
    TEXT, extra=["-keyopt", "rsa_padding_mode:pss"])))
case("no signed attributes", "250 2.0.0", sealed_inner(lambda w: w.sign(TEXT, extra=["-noattr"])))
case("content type that is not id-data", "550 5.6.0", sealed_inner(lambda w: w.sign(
    TEXT, opaque=True, extra=["-econtent_type", "1.2.3.4.5"])))
case("signed content altered (detached)", "550 5.7.7", sealed_inner(
    lambda w: w.sign(TEXT).replace(b"patient stable", b"patient decede")))


def _detached_signature(cut: Callable[[bytes], bytes]) -> Callable[[World], bytes]:
    """The multipart/signed with its signature part's base64 replaced by ``cut`` of it."""
    def entity(w: World) -> bytes:
        signed = w.sign(TEXT)
        head, marker, rest = signed.partition(b"Content-Type: application/pkcs7-signature")
        part_head, _, tail = rest.partition(b"\r\n\r\n")
        sig_b64, _, closing = tail.partition(b"\r\n\r\n------")
        der = base64.b64decode(sig_b64)
        return (head + marker + part_head + b"\r\n\r\n" + b64(cut(der)) + b"\r\n------"
                + closing)
    return sealed_inner(entity)


case("detached signature cut in half", "550 5.6.0", _detached_signature(lambda d: d[: len(d) // 2]))


def _multipart_signed(transform: Callable[[bytes, bytes], bytes]) -> Callable[[World], bytes]:
    """``transform(signed entity, boundary)`` of a genuine multipart/signed."""
    def entity(w: World) -> bytes:
        signed = w.sign(TEXT)
        boundary = signed.split(b'boundary="', 1)[1].split(b'"', 1)[0]
        return transform(signed, boundary)
    return sealed_inner(entity)


case("multipart/signed with three parts", "550 5.6.0", _multipart_signed(
    lambda s, b: s.replace(b"--" + b + b"--", b"--" + b + b"\r\nContent-Type: text/plain\r\n\r\n"
                           b"extra\r\n\r\n--" + b + b"--")))
case("multipart/signed without its closing delimiter", "550 5.6.0", _multipart_signed(
    lambda s, b: s.split(b"--" + b + b"--")[0]))
case("signature part labelled text/plain", "550 5.6.0", _multipart_signed(
    lambda s, b: s.replace(b"Content-Type: application/pkcs7-signature",
                           b"Content-Type: text/plain", 1)))


# --- layer order -------------------------------------------------------------------------------

case("encrypted but not signed", "550 5.7.7", lambda w: w.headers() + w.encrypt(TEXT))
case("signed but not encrypted", "550 5.7.5", lambda w: w.headers() + w.sign(TEXT))
case("signature over the ciphertext only", "550 5.7.7", lambda w: w.headers() + w.sign(
    w.encrypt(TEXT)))
case("triple wrap (sign, encrypt, sign)", "250 2.0.0", lambda w: w.headers() + w.sign(
    w.encrypt(w.sign(TEXT))))
case("signed twice inside the encryption", "250 2.0.0", sealed_inner(
    lambda w: w.sign(w.sign(TEXT))))
# The author is the innermost signer: an outer signature by someone else is a witness only.
case("another user's signature around the author's", "250 2.0.0", sealed_inner(
    lambda w: w.sign(w.sign(TEXT), LABO)))
case("the sender's signature around another author's", "550 5.7.7", sealed_inner(
    lambda w: w.sign(w.sign(TEXT, LABO))))
case("inner From differs from the outer From", "550 5.7.7", lambda w: w.message(
    f"From: {LABO}\r\n".encode() + TEXT))
