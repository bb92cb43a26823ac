"""deploy/haproxy/haproxy.cfg run by the real HAProxy in front of a gateway.

The file is used as shipped; only its addresses change (the frontends' bind addresses and the
servers' addresses become loopback ports of this test). HAProxy's own health checks
(``option smtpchk`` with ``check-send-proxy`` and ``send-proxy-v2``: a PROXY v2 LOCAL header,
then EHLO) must find every server up, and a message sent to a frontend must be relayed with the
real client named by the PROXY header.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from gateway.app import Gateway
from gateway.config import load_config
from gateway.devpki import init_pki
from gateway.translate.context import build_runtime
from tests.messages import Pki, open_as_recipient, text_entity, user_message
from tests.ports import port_map
from tests.sinks import Sink, start_tls_sink

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy missing")


def with_addresses(text: str, frontends: dict[str, int], backends: dict[str, int]) -> str:
    """The shipped file with its addresses changed, nothing else: each frontend binds a
    loopback port, each backend's servers point at the gateway's listener of its network."""
    out, section = [], ""
    for shipped in text.splitlines():
        line, stripped = shipped, shipped.strip()
        if not line.startswith((" ", "\t")) and stripped:
            section = stripped
        if stripped.startswith("bind ") and section.startswith("frontend "):
            network = "apicrypt" if "apicrypt" in section else "mssante"
            line = re.sub(r"bind \S+", f"bind 127.0.0.1:{frontends[network]}", line)
        elif stripped.startswith("server ") and section.startswith("backend "):
            network = "apicrypt" if "apicrypt" in section else "mssante"
            line = re.sub(r"(server \S+) \S+", rf"\1 127.0.0.1:{backends[network]}", line)
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class World:
    pki: Pki
    ports: dict[str, int]
    sinks: dict[str, Sink]
    logs: list[dict[str, object]]
    haproxy: subprocess.Popen[bytes]
    output: Path


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ports = port_map("a_in", "a_out", "m_in", "m_out", "front_a", "front_m")
    root = tmp_path / "pki"
    init_pki(root, force=True, apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    config_file = root / "gateway.toml"
    # behind the balancer, as the file's own comment asks
    config_file.write_text(re.sub(r"(?m)^\[networks\.(apicrypt|mssante)\]$",
                                  r"\g<0>\nproxy_protocol = true", config_file.read_text()))
    config = load_config(config_file)
    assert all(config.network(n).proxy_protocol for n in ("apicrypt", "mssante"))
    sinks = {"apicrypt": Sink(), "mssante": Sink()}
    servers = [await start_tls_sink(sinks[net], root, net, ports[key])
               for net, key in (("apicrypt", "a_out"), ("mssante", "m_out"))]
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(with_addresses(SHIPPED.read_text(),
                                  {"apicrypt": ports["front_a"], "mssante": ports["front_m"]},
                                  {"apicrypt": ports["a_in"], "mssante": ports["m_in"]}))
    output = tmp_path / "haproxy.out"
    with structlog.testing.capture_logs() as logs:
        gateway = Gateway(config, build_runtime(config))
        await gateway.start()
        with output.open("wb") as out:
            haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=out,
                                       stderr=subprocess.STDOUT)
        try:
            yield World(Pki(root), ports, sinks, logs, haproxy, output)
        finally:
            haproxy.terminate()
            haproxy.wait(timeout=10)
            await gateway.stop_accepting()
            await gateway.close_delivery()
            gateway.close()
            for server in servers:
                server.close()


def _checks(world: World, network: str) -> int:
    return sum(1 for e in world.logs if e.get("event") == "proxy.health_check"
               and e.get("network") == network)


async def test_haproxy_sees_every_gateway_up_and_relays_through_it(world: World) -> None:
    # The shipped file checks every 5 s and declares a server down after 3 failures: wait for
    # two rounds of checks of all three servers of each backend.
    for _ in range(300):
        if min(_checks(world, "apicrypt"), _checks(world, "mssante")) >= 6:
            break
        assert world.haproxy.poll() is None, world.output.read_text()
        await asyncio.sleep(0.1)
    else:
        pytest.fail("HAProxy's health checks never reached the gateway:\n"
                    + world.output.read_text())
    text = world.output.read_text()
    assert "failed" not in text and " is DOWN" not in text, text
    assert not [e for e in world.logs if e.get("event") == "proxy.invalid"]

    raw = user_message(world.pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,6\n"))

    def send() -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(world.pki.ca_file("apicrypt")))
        ctx.check_hostname = False
        with smtplib.SMTP("127.0.0.1", world.ports["front_a"], timeout=30) as client:
            client.starttls(context=ctx)
            client.ehlo("client.test")
            client.mail(JEAN)
            client.rcpt(MARIE_ON_APICRYPT)
            return client.data(raw)

    code, _ = await asyncio.to_thread(send)
    assert code == 250
    [relayed] = world.sinks["mssante"].contents
    assert b"INR 2,6" in open_as_recipient(world.pki, MARIE, relayed).content
    # the PROXY header named the client (HAProxy's view of this test's socket)
    assert any(e.get("event") == "proxy.client" and e.get("peer") == "127.0.0.1"
               for e in world.logs)


def test_the_shipped_file_binds_no_submission_port() -> None:
    binds = [line.split()[1] for line in SHIPPED.read_text().splitlines()
             if line.strip().startswith("bind ")]
    assert binds and all(b.endswith(":25") for b in binds), binds
