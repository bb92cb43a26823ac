"""deploy/postfix/ (Postfix in front of the gateway) run by the real Postfix, modes A and B.

The snippets are merged as their README says: appended to the main.cf and master.cf that
Debian's package ships (tests/postfix.py: a private instance of them). What changes: paths
(/etc/postfix/tls/*, /etc/passerelle/* become this test's PKI files; the hash maps live in the
instance's folder, filled as an operator would: the address book's aliases, the transports to
the gateway, and the networks' MX, here two sinks, for what the gateway re-injects) and
addresses (the public port, the gateway's listeners, the re-injection port 10026). One policy
line is taken out: ``reject_unknown_sender_domain`` needs DNS, which this machine has not.

Mode A: a remote MTA hands the message to Postfix, which queues it and relays it over
STARTTLS to the gateway's apicrypt listener; the gateway re-injects its re-sealed message into
Postfix on the loopback port, which delivers it to the mssante MX. Mode B: Postfix's public
smtpd proxies the remote MTA's transaction to the gateway's mssante listener (plain SMTP on
loopback, ``require_starttls = false``), the sender gets the gateway's own reply.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import load_config
from gateway.devpki import init_pki
from gateway.translate.context import build_runtime
from tests.messages import Pki, open_as_recipient, text_entity, text_of, user_message
from tests.ports import port_map
from tests.postfix import Postfix
from tests.sinks import Sink, start_tls_sink

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = ROOT / "deploy" / "postfix"
JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"
JEAN_ON_MSSANTE = "jean.dupont.apicrypt@passerelle.mssante.fr"

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/postfix").exists(),
                                reason="postfix missing")


@dataclass
class Front:
    pki: Pki
    ports: dict[str, int]
    postfix: Postfix
    sinks: dict[str, Sink]


def _paths(pki: Path, conf: Path) -> dict[str, str]:
    bundle = conf / "networks-ca.pem"
    bundle.write_bytes(b"".join((pki / f).read_bytes() for f in (
        "apicrypt/ca.pem", "mssante/ca.pem", "mssante/intermediate.pem")))
    return {
        "/etc/postfix/tls/mx.key": f"{pki}/apicrypt/next-hop-tls.key",
        "/etc/postfix/tls/mx.pem": f"{pki}/apicrypt/next-hop-tls.pem",
        "/etc/postfix/tls/igc-sante-ca.pem": f"{pki}/mssante/client-ca.pem",
        "/etc/postfix/tls/operator-client.key": f"{pki}/mssante/relay-client.key",
        "/etc/postfix/tls/operator-client.pem": f"{pki}/mssante/relay-client.pem",
        "/etc/postfix/tls/networks-ca.pem": str(bundle),
        "/etc/postfix/tls/loopback.key": f"{pki}/apicrypt/next-hop-tls.key",
        "/etc/postfix/tls/loopback.pem": f"{pki}/apicrypt/next-hop-tls.pem",
        "/etc/passerelle/apicrypt/ca.pem": f"{pki}/apicrypt/ca.pem",
        "/etc/passerelle/mssante/ca.pem": str(bundle),
        "/etc/postfix/passerelle_recipients": str(conf / "passerelle_recipients"),
        "/etc/postfix/passerelle_transport": str(conf / "passerelle_transport"),
    }


def merged(postfix: Postfix, pki: Path, ports: dict[str, int], mode: str) -> None:
    """The snippets appended to the instance's package files, paths and addresses changed."""
    conf = postfix.conf
    paths = _paths(pki, conf)
    main = (SNIPPETS / "main.cf").read_text()
    master = (SNIPPETS / "master.cf").read_text()
    for old, new in paths.items():
        main, master = main.replace(old, new), master.replace(old, new)
    main = main.replace("    reject_unknown_sender_domain,\n", "")  # needs DNS (see above)
    master = master.replace("127.0.0.1:10026", f"127.0.0.1:{ports['reinject']}")
    master = master.replace("[127.0.0.1]:2525", f"[127.0.0.1]:{ports['a_in']}")
    if mode == "B":  # the mode B service replaces the public smtpd of the instance
        block = re.search(r"(?m)^# smtp      inet.*\n(?:#   -o .*\n)+", master)
        assert block is not None
        service = "\n".join(line[2:] for line in block.group(0).splitlines())
        service = service.replace("smtp      inet", f"127.0.0.1:{ports['front']} inet", 1)
        service = service.replace("127.0.0.1:2587", f"127.0.0.1:{ports['m_in']}")
        package = (conf / "master.cf").read_text()
        package = re.sub(rf"(?m)^127\.0\.0\.1:{ports['front']} inet .*$", "", package)
        (conf / "master.cf").write_text(package + "\n" + service + "\n")
    (conf / "main.cf").write_text((conf / "main.cf").read_text() + "\n" + main)
    (conf / "master.cf").write_text((conf / "master.cf").read_text() + "\n" + master)
    # the operator's maps: the address book's aliases; the gateway for its domains, the
    # networks' MX for the real ones (here: the sinks)
    (conf / "passerelle_recipients").write_text(
        f"{MARIE_ON_APICRYPT} OK\n{JEAN_ON_MSSANTE} OK\n")
    (conf / "passerelle_transport").write_text(
        f"passerelle.apicrypt.org passerelle-apicrypt:[127.0.0.1]:{ports['a_in']}\n"
        f"passerelle.mssante.fr passerelle-mssante:[127.0.0.1]:{ports['m_in']}\n"
        f"hopital-test.mssante.fr smtp:[127.0.0.1]:{ports['sink_m']}\n"
        f"medical59.apicrypt.org smtp:[127.0.0.1]:{ports['sink_a']}\n")
    for name in ("passerelle_recipients", "passerelle_transport"):
        run = postfix.command("postmap", "-c", str(conf), str(conf / name))
        assert run.returncode == 0, run.stderr


async def _front(tmp_path: Path, mode: str) -> AsyncIterator[Front]:
    ports = port_map("a_in", "m_in", "reinject", "front", "sink_a", "sink_m")
    root = tmp_path / "pki"
    init_pki(root, force=True, apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["reinject"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["reinject"])
    root.chmod(0o755)
    for path in root.rglob("*"):  # Postfix's daemons read the TLS files
        path.chmod(0o755 if path.is_dir() else 0o644)
    text = (root / "gateway.toml").read_text()
    # both networks relay to Postfix's loopback service, whose certificate (loopback.pem)
    # the dev apicrypt CA issued; mode B: Postfix's proxy leg is plain SMTP
    text = text.replace('relay_tls_cert = "mssante/relay-client.pem"',
                        'relay_ca = "apicrypt/ca.pem"\nrelay_tls_cert = "mssante/relay-client.pem"')
    if mode == "B":
        text = text.replace("require_client_cert = false",
                            "require_client_cert = false\nrequire_starttls = false")
    (root / "gateway.toml").write_text(text)
    config = load_config(root / "gateway.toml")
    gateway = Gateway(config, build_runtime(config))
    await gateway.start()
    sinks = {"apicrypt": Sink(), "mssante": Sink()}
    servers = [await start_tls_sink(sinks[net], root, net, ports[key])
               for net, key in (("apicrypt", "sink_a"), ("mssante", "sink_m"))]
    postfix = Postfix(ports["front"], {})
    try:
        merged(postfix, root, ports, mode)
        postfix.start()
        yield Front(Pki(root), ports, postfix, sinks)
    finally:
        postfix.stop()
        await gateway.stop_accepting()
        await gateway.close_delivery()
        gateway.close()
        for server in servers:
            server.close()


@pytest.fixture
async def front_a(tmp_path: Path) -> AsyncIterator[Front]:
    async for front in _front(tmp_path, "A"):
        yield front


@pytest.fixture
async def front_b(tmp_path: Path) -> AsyncIterator[Front]:
    async for front in _front(tmp_path, "B"):
        yield front


def _remote_mta(front: Front, sender: str, rcpt: str, raw: bytes,
                client_cert: tuple[Path, Path] | None = None) -> tuple[int, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the remote MTA's side is not what is tested here
    if client_cert is not None:
        ctx.load_cert_chain(*client_cert)
    with smtplib.SMTP("127.0.0.1", front.ports["front"], timeout=60) as client:
        client.ehlo("mx.remote.example")
        client.starttls(context=ctx)
        client.ehlo("mx.remote.example")
        code, text = client.mail(sender)
        assert code == 250, text
        code, text = client.rcpt(rcpt)
        assert code == 250, text
        return client.data(raw)


async def _delivered(front: Front, network: str) -> tuple[list[str], bytes]:
    for _ in range(600):
        if front.sinks[network].received:
            return front.sinks[network].received[0]
        await asyncio.sleep(0.1)
    pytest.fail("not delivered:\n" + front.postfix.maillog()[-4000:])


async def test_mode_a_postfix_queues_then_the_gateway_relays_back_through_it(
        front_a: Front) -> None:
    raw = user_message(front_a.pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,8\n"))
    code, _ = await asyncio.to_thread(_remote_mta, front_a, JEAN, MARIE_ON_APICRYPT, raw)
    assert code == 250  # Postfix's own acceptance (queued)
    rcpts, relayed = await _delivered(front_a, "mssante")
    assert rcpts == [MARIE]
    assert b"INR 2,8" in open_as_recipient(front_a.pki, MARIE, relayed).content
    log = front_a.postfix.maillog()
    # the hop to the gateway was verified TLS, and the gateway's reply names its trace
    assert re.search(r"Verified TLS connection established to 127\.0\.0\.1", log), log[-3000:]
    assert re.search(r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+.*status=sent \(250 2\.0\.0 OK: "
                     r"relayed \(Ok: queued as \w+\) \[trace [0-9a-f]{16}\]\)", log), log[-3000:]


async def test_mode_b_the_sender_gets_the_gateways_own_reply(front_b: Front) -> None:
    raw = user_message(front_b.pki, MARIE, JEAN_ON_MSSANTE, text_entity("Bien reçu\n"))
    root = front_b.pki.root / "mssante"
    code, text = await asyncio.to_thread(
        _remote_mta, front_b, MARIE, JEAN_ON_MSSANTE, raw,
        (root / "peer-client.pem", root / "peer-client.key"))
    assert code == 250
    assert b"[trace " in text  # the gateway's reply, passed back by Postfix's proxy
    rcpts, relayed = await _delivered(front_b, "apicrypt")
    assert rcpts == [JEAN]
    assert "Bien reçu" in text_of(open_as_recipient(front_b.pki, JEAN, relayed).content)


def test_the_merged_snippets_take_effect(tmp_path: Path) -> None:
    """The merged files read back by postconf: the snippet's settings won over the package's."""
    postfix = Postfix(1, {})
    try:
        pki = tmp_path / "pki"
        init_pki(pki)
        merged(postfix, pki, {"a_in": 2, "m_in": 3, "reinject": 4, "front": 1, "sink_a": 5,
                              "sink_m": 6}, "A")
        run = subprocess.run(["postconf", "-c", str(postfix.conf), "-n"], capture_output=True,
                             text=True, timeout=30, check=False)
        assert "relay_domains = passerelle.apicrypt.org, passerelle.mssante.fr" in run.stdout
    finally:
        postfix.stop()
