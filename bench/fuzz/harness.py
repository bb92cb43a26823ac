"""Coverage-guided fuzzing (atheris / libFuzzer) of the gateway's parsers of network input.

Rule kept here: one target per run, chosen by name; its seed corpus is generated at run time
into a temporary folder (removed afterwards unless ``--keep-corpus``), so no key-related byte
is ever committed; an input breaks the rule when ``bench.fuzz.targets`` raises ``Finding``, and
libFuzzer then stops and writes the input under ``$TMPDIR/passerelle-fuzz-artifacts/``. The
summary prints executions, executions per second and crashes per target.

    python -m bench.fuzz.harness cms -max_total_time=240
    python -m bench.fuzz.harness smtp,proxy,mime -max_total_time=180   # one after the other
    python -m bench.fuzz.harness --replay cms /tmp/passerelle-fuzz-artifacts/cms-crash-...
    python -m bench.fuzz.harness --list

Needs ``pip install -e '.[fuzz]'`` (atheris). Everything after the target name goes to libFuzzer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["gateway", "asn1crypto", "email", "aiosmtpd"]):
    import structlog

    from bench.fuzz import targets

# The listener logs every session: at fuzzing speed that is all the run would do.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
logging.getLogger("mail.log").setLevel(logging.CRITICAL)


class _Listener:
    """A persistent event loop and SMTP listener: one session per fuzz input."""

    def __init__(self, *, proxy: bool) -> None:
        self.loop = asyncio.new_event_loop()
        self.rig = targets.SmtpRig(proxy_protocol=proxy)
        self.loop.run_until_complete(self.rig.start())

    def __call__(self, data: bytes) -> None:
        self.loop.run_until_complete(self.rig.session(data, timeout=10.0))


def _listener_target(proxy: bool) -> Callable[[bytes], None]:
    listener: list[_Listener] = []

    def run(data: bytes) -> None:
        if not listener:
            listener.append(_Listener(proxy=proxy))
        listener[0](data)

    return run


TARGETS: dict[str, targets.Target] = {
    **targets.TARGETS,
    "smtp": targets.Target("smtp", targets.smtp_seeds, _listener_target(False),
                           "a real listener fed one client stream per input"),
    "proxy": targets.Target("proxy", targets.proxy_seeds, _listener_target(True),
                            "a listener behind PROXY protocol, header and session per input"),
}


def write_corpus(target: targets.Target, folder: Path) -> int:
    seeds = list(target.seeds())
    for seed in seeds:
        (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)  # noqa: S324 - a file name
    return len(seeds)


_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_CRASH = re.compile(r"Uncaught Python exception|ERROR: libFuzzer|Test unit written to (\S+)")


def _child(name: str, corpus: str, rest: list[str]) -> None:
    """The libFuzzer process (it ends with exit(), so it runs apart from the clean-up)."""
    target = TARGETS[name]

    def one_input(data: bytes) -> None:
        target.run(data)

    atheris.Setup([sys.argv[0], *rest, corpus], one_input)
    atheris.Fuzz()


def run(name: str, rest: list[str], *, keep: bool = False) -> dict[str, object]:
    """Fuzz ``name`` with libFuzzer arguments ``rest``; the figures of the run."""
    target = TARGETS[name]
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    artifacts = Path(tempfile.gettempdir()) / "passerelle-fuzz-artifacts"
    artifacts.mkdir(exist_ok=True)
    try:
        count = write_corpus(target, corpus)
        print(f"target {name}: {count} seeds in {corpus}", flush=True)
        args = [sys.executable, "-m", "bench.fuzz.harness", "--child", name, str(corpus),
                f"-artifact_prefix={artifacts}/{name}-", *rest]
        done = subprocess.run(args, capture_output=True, text=True, errors="replace",
                              check=False)
        output = done.stdout + done.stderr
        sys.stdout.write(output[-4000:])
        runs = _DONE.search(output)
        executions, seconds = (int(runs.group(1)), int(runs.group(2))) if runs else (0, 0)
        crashes = [m.group(1) for m in _CRASH.finditer(output) if m.group(1)]
        return {"target": name, "seeds": count, "executions": executions, "seconds": seconds,
                "exec_per_s": round(executions / seconds) if seconds else 0,
                "crashes": len(crashes) or int(done.returncode != 0), "artifacts": crashes,
                "corpus": len(list(corpus.iterdir()))}
    finally:
        if not keep:
            shutil.rmtree(corpus, ignore_errors=True)


def main(argv: list[str]) -> None:
    if len(argv) >= 4 and argv[1] == "--child":
        _child(argv[2], argv[3], argv[4:])
        return
    if len(argv) == 4 and argv[1] == "--replay":  # one input, its traceback if it breaks
        TARGETS[argv[2]].run(Path(argv[3]).read_bytes())
        print("handled: the rule holds for this input")
        return
    if len(argv) < 2 or argv[1] in ("-h", "--help", "--list"):
        print(__doc__)
        for name, target in TARGETS.items():
            print(f"  {name:12} {target.doc}")
        return
    names = argv[1].split(",")
    rest = [arg for arg in argv[2:] if arg != "--keep-corpus"]
    results = [run(name, rest, keep="--keep-corpus" in argv) for name in names]
    print("\ntarget        seeds  corpus   executions  seconds  exec/s  crashes")
    for r in results:
        found = " ".join(map(str, r["artifacts"]))  # type: ignore[call-overload]
        print(f"{r['target']:12} {r['seeds']:6} {r['corpus']:7} {r['executions']:12} "
              f"{r['seconds']:8} {r['exec_per_s']:7} {r['crashes']:8}  {found}")


if __name__ == "__main__":
    main(sys.argv)
