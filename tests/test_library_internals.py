"""The private names of aiosmtpd and aiosmtplib the transports rely on still exist.

transport/smtp_in.py subclasses aiosmtpd's ``SMTP`` and overrides or reads some of its private
members; transport/smtp_client.py re-implements aiosmtplib's DATA on its protocol object. The
versions are capped in pyproject.toml; this test is what fails, loudly and first, the day an
upgrade inside the caps (or a lifted cap) renames one of them.
"""

from __future__ import annotations

import asyncio
import inspect

import aiosmtpd.smtp
import aiosmtplib
import aiosmtplib.protocol
import pytest

from gateway.transport import smtp_client, smtp_in

# (name, parameters after self) of aiosmtpd.smtp.SMTP's members smtp_in overrides or calls.
AIOSMTPD_METHODS = [
    ("_getaddr", ["arg"]),                  # overridden: cached address parsing
    ("_handle_client", []),                 # overridden: session limits before the greeting
    ("_timeout_cb", []),                    # overridden: 421 before the idle close
    ("_call_handler_hook", ["command", "args"]),
    ("_reset_timeout", ["duration"]),
    ("_set_post_data_state", []),
    ("check_helo_needed", ["helo"]),
    ("check_auth_needed", ["caller_method"]),
    ("push", ["status"]),
    ("smtp_DATA", ["arg"]),                 # overridden: bulk content reader
    ("smtp_MAIL", ["arg"]),
    ("smtp_STARTTLS", ["arg"]),
]
# Attributes smtp_in reads on a live session.
AIOSMTPD_ATTRIBUTES = ["_reader", "_writer", "_tls_protocol", "_original_transport",
                       "local_part_limit", "line_length_limit", "data_size_limit", "envelope",
                       "session", "transport"]


@pytest.mark.parametrize(("name", "params"), AIOSMTPD_METHODS, ids=[n for n, _ in AIOSMTPD_METHODS])
def test_aiosmtpd_methods(name: str, params: list[str]) -> None:
    member = getattr(aiosmtpd.smtp.SMTP, name, None)
    assert callable(member), f"aiosmtpd.smtp.SMTP.{name} is gone"
    assert list(inspect.signature(member).parameters)[1:] == params
    assert name in inspect.getsource(smtp_in), f"smtp_in no longer uses {name}: update the list"


async def test_aiosmtpd_session_attributes() -> None:
    # Some are set only once a connection is made: look for where aiosmtpd assigns them.
    session = aiosmtpd.smtp.SMTP(handler=object(), loop=asyncio.get_running_loop())
    source = inspect.getsource(aiosmtpd.smtp.SMTP)
    for name in AIOSMTPD_ATTRIBUTES:
        assert hasattr(session, name) or f"self.{name} = " in source, (
            f"aiosmtpd.smtp.SMTP has no attribute {name}")
    # the reader's buffer bound that smtp_DATA raises while a message streams in
    reader = asyncio.StreamReader(limit=1001)
    assert reader._limit == 1001


def test_aiosmtplib_protocol_members_of_the_data_fast_path() -> None:
    protocol = aiosmtplib.protocol.SMTPProtocol
    assert callable(getattr(protocol, "read_response", None))
    assert callable(getattr(protocol, "write", None))
    assert callable(getattr(protocol, "execute_data_command", None))  # the method copied
    instance = protocol(loop=asyncio.new_event_loop())
    assert hasattr(instance, "_command_lock") and hasattr(instance, "_response_pending")
    assert callable(getattr(aiosmtplib.SMTP, "_ehlo_or_helo_if_needed", None))
    assert smtp_client.Client.data is not aiosmtplib.SMTP.data


def test_each_module_lists_the_internals_it_touches() -> None:
    assert "Library internals" in (smtp_in.__doc__ or "")
    assert "Library internals" in (smtp_client.__doc__ or "")
    for name, _ in AIOSMTPD_METHODS:
        if name.startswith("_"):
            assert name in (smtp_in.__doc__ or ""), name
    for name in ("_command_lock", "_response_pending", "_ehlo_or_helo_if_needed"):
        assert name in (smtp_client.__doc__ or ""), name
