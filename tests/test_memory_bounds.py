"""Memory bounds of a running gateway (``gateway run`` as a subprocess): big messages pass,
messages over the limit are refused without being kept. The peak-RSS figures under load are
``python -m bench.memory``'s job; here only what must hold on any machine is asserted."""

from __future__ import annotations

from pathlib import Path

from bench.memory import MB, make_message, send, start, stop


async def test_a_25_mb_message_is_relayed(tmp_path: Path) -> None:
    run = await start(tmp_path / "pki")
    try:
        raw = make_message(tmp_path / "pki", 25 * MB - 200_000, "big")
        assert 24 * MB < len(raw) < 26_214_400
        code, _ = await send(run, raw)
        assert code == 250
        assert run.sink.count == 1
    finally:
        await stop(run)


async def test_over_the_limit_is_refused_without_being_kept(tmp_path: Path) -> None:
    run = await start(tmp_path / "pki")
    try:
        raw = make_message(tmp_path / "pki", 40 * MB, "over")
        before = run.peak_mb()
        # No SIZE declared: the gateway learns the size while reading, counts past the limit
        # without keeping, and answers 552 at the end of the content.
        code, _ = await send(run, raw, declare_size=False)
        assert code == 552
        grown = run.peak_mb() - before
        assert grown < 0.8 * len(raw) / 2**20, f"{grown:.0f} MB kept for a refused message"
        # Declared: refused at MAIL, before any content is sent.
        code, _ = await send(run, raw, declare_size=True)
        assert code == 552
        assert run.sink.count == 0
        # and the gateway still relays
        code, _ = await send(run, make_message(tmp_path / "pki", 20_000, "after"))
        assert code == 250
        assert run.sink.count == 1
    finally:
        await stop(run)
