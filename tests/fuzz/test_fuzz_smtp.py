"""Fuzz of SMTP ingress: a real listener (aiosmtpd with the gateway's session class and the real
routing policy) fed random and mutated client byte streams, with and without a PROXY protocol
header, and the envelope / header address parsers on their own.

What is checked: every byte the listener sends is a well-formed reply (three digits, one code
per multi-line reply, printable text, CRLF), no policy callable or handler meets an exception
other than the gateway's typed errors, every session is released once closed, and the listener
still answers a clean session afterwards.
"""

from __future__ import annotations

import asyncio

from hypothesis import example, given
from hypothesis import strategies as st

from bench.fuzz import targets
from bench.fuzz.targets import SmtpRig
from tests.fuzz.strategies import fuzz_settings, fuzz_text, mutated, smtp_stream

CLEAN = b"EHLO client.example\r\nNOOP\r\nQUIT\r\n"
PROXY_CLEAN = b"PROXY TCP4 198.51.100.1 127.0.0.1 40000 25\r\n"


async def _sessions(rig: SmtpRig, streams: list[tuple[bytes, int]], clean: bytes) -> None:
    await rig.start()
    try:
        for stream, chunk in streams:
            await rig.session(stream, chunk=chunk)
        after = targets.check_replies(await rig.session(clean))
        assert after[0] == 220 and after[-1] == 221, after  # still serving
    finally:
        await rig.stop()


def run_sessions(streams: list[tuple[bytes, int]], *, proxy: bool = False,
                 require_starttls: bool = False) -> None:
    rig = SmtpRig(proxy_protocol=proxy, require_starttls=require_starttls)
    clean = PROXY_CLEAN + CLEAN if proxy else CLEAN
    asyncio.run(_sessions(rig, streams, clean))


CHUNKS = st.sampled_from([0, 0, 1, 7, 64, 1000])


@fuzz_settings(120)
@given(st.lists(st.tuples(smtp_stream(), CHUNKS), min_size=1, max_size=3))
@example([(targets.smtp_seeds()[1], 0)])
@example([(b"EHLO x\r\nA\rB C\r\n", 0)])
def test_listener_answers_any_stream_with_well_formed_replies(
        streams: list[tuple[bytes, int]]) -> None:
    run_sessions(streams)


@fuzz_settings(50)
@given(st.lists(st.tuples(smtp_stream(), CHUNKS), min_size=1, max_size=2))
def test_listener_requiring_starttls_answers_any_stream(
        streams: list[tuple[bytes, int]]) -> None:
    run_sessions(streams, require_starttls=True)


@fuzz_settings(120)
@given(st.lists(st.tuples(
    st.one_of(mutated(targets.proxy_seeds(), max_mutations=4),
              st.binary(max_size=120).map(lambda b: b"PROXY " + b),
              st.binary(max_size=60).map(lambda b: b"\r\n\r\n\x00\r\nQUIT\n" + b)),
    CHUNKS), min_size=1, max_size=3))
@example([(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + CLEAN, 0)])
def test_proxy_protocol_header_is_parsed_or_refused(streams: list[tuple[bytes, int]]) -> None:
    """Behind a balancer: any header either names a client (then a normal session) or the
    connection is closed without a word; the sessions counted go back to zero."""
    run_sessions(streams, proxy=True)


@fuzz_settings(500)
@given(fuzz_text(targets.ADDRESS_SEEDS))
@example("a@" + "\u0130" * 3 + ".org")
def test_address_parsers_refuse_with_their_typed_error(text: str) -> None:
    targets.check_address(text)
