"""Observability: structured logs, pseudonymised addresses.

Rule kept here: nothing of a message reaches a log. Events carry trace ids, directions, sizes,
durations, outcomes and reply codes; addresses only as a keyed hash (`pseudonymise`), so that
several instances sharing a key agree on the same token while no one can read them back.
A last processor drops any field whose name says it holds content, in case a caller forgets.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

# Fields that must never be logged, whatever a caller passes.
_FORBIDDEN = frozenset({"body", "content", "subject", "raw", "plaintext", "text", "name",
                        "patient", "message", "data"})


def set_pseudonym_key(key: bytes) -> None:
    """Use a shared key so several instances pseudonymise an address to the same token."""
    global _pseudonymiser
    if len(key) < 16:
        raise ValueError("pseudonym key must be at least 16 bytes")
    _pseudonymiser = keyed_pseudonym(key)


def keyed_pseudonym(key: bytes) -> Callable[[str], str]:
    """The pseudonymiser of ``key``: HMAC-BLAKE2b of the lower-cased value, ``a:`` and 16 hex
    characters. One function for every address and Message-ID the gateway logs, and for
    ``gateway trace``, which recomputes a token from the same key file to search a log."""
    def pseudonymise(value: str) -> str:
        digest = hmac.new(key, value.strip().lower().encode("utf-8", "surrogateescape"),
                          hashlib.blake2b).hexdigest()
        return "a:" + digest[:16]
    return pseudonymise


_pseudonymiser = keyed_pseudonym(secrets.token_bytes(32))  # until set_pseudonym_key


def pseudonymise(address: str) -> str:
    """A stable, keyed, non-reversible token for an address (the process's key)."""
    return _pseudonymiser(address)


def new_trace_id() -> str:
    return secrets.token_hex(8)


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key in _FORBIDDEN:
            event[key] = "[redacted]"
    return event


def configure_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Set structlog (and the stdlib loggers of the libraries) up for production use."""
    out = stream or sys.stderr
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=out.isatty()))
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # show_locals=False: locals of a failing frame may hold keys or plaintext.
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        ),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (PrintLogger writes the text and the newline separately), so
        # the lines of several worker processes sharing stderr do not interleave.
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Library loggers: aiosmtpd's mail.log writes every DATA line at DEBUG, aioimaplib whole
    # responses: never let them below INFO, and route them through the same renderer.
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=shared,
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    for noisy in ("mail.log", "aioimaplib", "aioimaplib.aioimaplib", "asyncio"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    # A library's warning (cryptography on a certificate a sender made badly) would otherwise
    # be two raw lines on stderr among the JSON events.
    logging.captureWarnings(True)


def disable_core_dumps() -> bool:
    """Decrypted content lives in memory: make sure a crash cannot write it to a core file."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        return False
    try:  # PR_SET_DUMPABLE = 4: also blocks ptrace attach by other users
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    return os.name == "posix"


def return_freed_memory(threshold: int = 256 * 1024) -> bool:
    """Ask glibc to serve every allocation of ``threshold`` bytes or more with its own mmap.

    glibc raises its mmap threshold as big blocks are freed, after which big messages are cut
    from the heaps of the threads that translated them and stay there once freed: the process
    keeps the high-water mark of every burst. A fixed threshold gives each big buffer back as
    soon as it is freed (and zeroed pages to the next one). M_MMAP_THRESHOLD = -3.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.mallopt(-3, threshold)) == 1
    except (OSError, AttributeError):  # not glibc: its allocator has its own policy
        return False


def stop_with_parent() -> bool:
    """prctl(PR_SET_PDEATHSIG, SIGTERM): this process gets SIGTERM when its parent dies."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def lock_memory() -> bool:
    """mlockall(MCL_CURRENT | MCL_FUTURE): keep decrypted content out of swap. Needs
    CAP_IPC_LOCK or a high enough RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=infinity)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.mlockall(1 | 2)) == 0
    except (OSError, AttributeError):
        return False
