"""The operator's commands as subprocesses: pki init, check-config, translate, inspect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.messages import Pki, open_as_recipient, text_entity, text_of, user_message

JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"


def gateway(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, args)], input=stdin,
                          capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("cli") / "pki"
    proc = gateway("pki", "init", root)
    assert proc.returncode == 0, proc.stderr
    assert b"gateway.toml" in proc.stdout
    return Pki(root)


def test_pki_init_refuses_to_overwrite(pki: Pki) -> None:
    proc = gateway("pki", "init", pki.root)
    assert proc.returncode == 2
    assert b"error:" in proc.stderr


def test_check_config_accepts_the_generated_config(pki: Pki) -> None:
    proc = gateway("check-config", pki.config)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(b"OK")


def test_check_config_reports_every_problem_with_file_and_key(pki: Pki, tmp_path: Path) -> None:
    text = pki.config.read_text()
    broken = tmp_path / "broken.toml"
    text = text.replace('smime_key = "apicrypt/gateway.key"',
                        'smime_key = "mssante/gateway.key"')  # key of another certificate
    text = text.replace('directory = "mssante/users"', 'directory = "mssante/nowhere"')
    text = text.replace('domains = ["*.apicrypt.org"]', 'domains = ["*.apicrypt.org", "a@b"]')
    text = text.replace("[networks.mssante]", "[networks.other]\nrelay = \"x\"\n\n"
                        "[networks.mssante]")
    broken.write_text(text.replace('"apicrypt/', f'"{pki.root}/apicrypt/')
                      .replace('"mssante/', f'"{pki.root}/mssante/')
                      .replace('"pseudonym.key"', f'"{pki.root}/pseudonym.key"'))
    proc = gateway("check-config", broken)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "networks.apicrypt.smime_key" in err
    assert "networks.mssante.directory" in err
    assert "networks.apicrypt.domains" in err
    assert "networks.other" in err
    assert str(broken) in err
    assert "PRIVATE KEY" not in err


def test_an_address_routing_refuses_is_a_check_config_problem(pki: Pki, tmp_path: Path) -> None:
    """``a%b@...`` in the address book: check-config names the key (exit 2), and inspect,
    which loads the same configuration, refuses it the same way instead of a traceback."""
    text = pki.config.read_text()
    text += ('\n[[address_book]]\napicrypt = "a%b@medical59.apicrypt.org"\n'
             'mssante = "ab@hopital-test.mssante.fr"\n')
    broken = tmp_path / "relay-hack.toml"
    broken.write_text(text.replace('"apicrypt/', f'"{pki.root}/apicrypt/')
                      .replace('"mssante/', f'"{pki.root}/mssante/')
                      .replace('"pseudonym.key"', f'"{pki.root}/pseudonym.key"'))
    proc = gateway("check-config", broken)
    assert proc.returncode == 2, proc.stdout
    err = proc.stderr.decode()
    assert "address_book[" in err and "].apicrypt: bad address: relay hack in local part" in err
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("x\n"))
    proc = gateway("inspect", "--config", broken, "-", stdin=raw)
    assert proc.returncode == 2
    assert b"Traceback" not in proc.stderr and b"relay hack" in proc.stderr


def test_check_config_warns_about_an_intermediate_no_chain_can_use(pki: Pki,
                                                                    tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    from gateway.smime import certgen

    stray = certgen.make_ca("Stray Inter", issuer=certgen.make_ca("Unknown Root"))
    (tmp_path / "stray.pem").write_bytes(stray.certificate.public_bytes(Encoding.PEM))
    text = pki.config.read_text().replace(
        'intermediates = ["mssante/intermediate.pem"]',
        f'intermediates = ["mssante/intermediate.pem", "{tmp_path}/stray.pem"]', 1)
    config = tmp_path / "stray.toml"
    config.write_text(text.replace('"apicrypt/', f'"{pki.root}/apicrypt/')
                      .replace('"mssante/', f'"{pki.root}/mssante/')
                      .replace('"pseudonym.key"', f'"{pki.root}/pseudonym.key"'))
    proc = gateway("check-config", config)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err  # a warning: the file may be right tomorrow
    assert "networks.mssante.intermediates: intermediate leads to no trust anchor" in err
    assert "no issuer named" in err and "no chain can use it" in err
    clean = gateway("check-config", pki.config)
    assert b"no chain can use it" not in clean.stderr


def test_translate_reseals_for_the_recipient(pki: Pki, tmp_path: Path) -> None:
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("Kaliémie 5,9 mmol/L\n"))
    src = tmp_path / "in.eml"
    src.write_bytes(raw)
    proc = gateway("translate", "--config", pki.config, "--from", "apicrypt", src)
    assert proc.returncode == 0, proc.stderr
    opened = open_as_recipient(pki, MARIE, proc.stdout)
    assert "Kaliémie 5,9" in text_of(opened.content)
    assert b"smime=pass" in opened.headers


def test_translate_failure_is_one_line_with_the_reply(pki: Pki, tmp_path: Path) -> None:
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("x\n"),
                       signer="labo.biolille@labo59.apicrypt.org")
    src = tmp_path / "forged.eml"
    src.write_bytes(raw)
    proc = gateway("translate", "--config", pki.config, "--from", "apicrypt", src)
    assert proc.returncode == 1
    assert proc.stdout == b""
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("refused: 550 5.7.0")  # one reply after a CBC decryption
    assert "SignerMismatch" in lines[0]  # the operator still reads the precise cause


def test_inspect_reports_layers_and_signer(pki: Pki) -> None:
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("x\n"))
    proc = gateway("inspect", "--config", pki.config, "-", stdin=raw)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["relayable"] is True
    assert report["source"] == "apicrypt"
    assert [layer["kind"] for layer in report["layers"]] == ["enveloped", "signed-detached"]
    assert report["layers"][1]["signature"] == "pass"
    assert JEAN in report["layers"][1]["signer"]["addresses"]
    assert report["problems"] == []


def test_inspect_of_a_revoked_signer_says_why(pki: Pki) -> None:
    sender = "revoque@medical59.apicrypt.org"
    raw = user_message(pki, sender, MARIE_ON_APICRYPT, text_entity("x\n"))
    proc = gateway("inspect", "--config", pki.config, "-", stdin=raw)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["relayable"] is False
    [problem] = report["problems"]
    assert problem["error"] == "RevokedSigner"
    assert problem["reply"].startswith("550 5.7.7")
    # the decryption layer was opened before the signature failed, and the report says so
    assert report["layers"][0]["kind"] == "enveloped"


def test_inspect_of_clear_mail(pki: Pki) -> None:
    raw = f"From: {JEAN}\r\nTo: {MARIE_ON_APICRYPT}\r\n\r\nbonjour\r\n".encode()
    proc = gateway("inspect", "--config", pki.config, "-", stdin=raw)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["problems"][0]["error"] == "NotEncrypted"
    assert report["problems"][0]["reply"].startswith("550 5.7.5")


def test_help_lists_every_command() -> None:
    proc = gateway("--help")
    assert proc.returncode == 0
    for command in (b"run", b"demo", b"translate", b"inspect", b"pki", b"check-config"):
        assert command in proc.stdout


def test_the_first_message_by_hand(tmp_path: Path) -> None:
    """The README's first message: `gateway run`, `gateway demo-sink` as the next hops and
    `gateway send` as a user's client, each as the operator runs them."""
    import time

    from gateway.devpki import free_ports, init_pki

    a_in, a_out, m_in, m_out = free_ports(4)
    config = init_pki(tmp_path / "dev", apicrypt_port=a_in, apicrypt_relay_port=a_out,
                      mssante_port=m_in, mssante_relay_port=m_out)
    gateway = [sys.executable, "-m", "gateway"]
    sink_out = tmp_path / "sink.out"
    with sink_out.open("wb") as out:
        sink = subprocess.Popen([*gateway, "demo-sink", "--config", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    run = subprocess.Popen([*gateway, "run", "--workers", "1", "--config", str(config)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if b"mssante next hop listening" in sink_out.read_bytes():
                break
            time.sleep(0.1)
        sent = None
        for _ in range(50):  # until the gateway listens
            sent = subprocess.run([*gateway, "send", "--config", str(config), "--text",
                                   "INR 2,4 premier message"], capture_output=True, text=True,
                                  timeout=60, check=False)
            if "cannot reach" not in sent.stderr:
                break
            time.sleep(0.2)
        assert sent is not None and sent.returncode == 0, sent.stdout + sent.stderr
        assert "gateway answered: 250 2.0.0 OK: relayed (queued as DEMO) [trace " in sent.stdout
        for _ in range(100):
            if b"INR 2,4 premier message" in sink_out.read_bytes():
                break
            time.sleep(0.1)
        shown = sink_out.read_text()
        assert "a message for marie.curie@hopital-test.mssante.fr" in shown
        assert "INR 2,4 premier message" in shown and "signature valid" in shown
    finally:
        for proc in (run, sink):
            proc.terminate()
            proc.wait(timeout=30)


def test_pki_init_writes_certs_dev_by_default_with_metrics(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway", "pki", "init"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "certs" / "dev" / "gateway.toml").read_text()
    assert 'metrics_listen = "127.0.0.1:9108"' in text


def test_the_readme_openssl_and_swaks_recipe_relays(tmp_path: Path) -> None:
    """The README's "by hand" lines (openssl + swaks), run as written; only the PKI folder
    and the listener's port are this test's."""
    import re
    import shutil
    import time

    from gateway.devpki import free_ports, init_pki

    if shutil.which("swaks") is None:
        pytest.skip("swaks missing")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("Without the sample keys, the same by hand:", 1)[1]
    script = block.split("```sh\n", 1)[1].split("```", 1)[0]
    a_in, a_out, m_in, m_out = free_ports(4)
    dev = tmp_path / "dev"
    config = init_pki(dev, apicrypt_port=a_in, apicrypt_relay_port=a_out, mssante_port=m_in,
                      mssante_relay_port=m_out)
    script = script.replace("D=certs/dev", f"D={dev}").replace("127.0.0.1:2525",
                                                               f"127.0.0.1:{a_in}")
    assert re.search(rf"127\.0\.0\.1:{a_in}", script)
    gateway = [sys.executable, "-m", "gateway"]
    sink_out = tmp_path / "sink.out"
    with sink_out.open("wb") as out:
        sink = subprocess.Popen([*gateway, "demo-sink", "--config", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    run = subprocess.Popen([*gateway, "run", "--workers", "1", "--config", str(config)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        assert "250 2.0.0 OK: relayed" in done.stdout, done.stdout[-3000:]
        for _ in range(100):
            if b"INR 2,4" in sink_out.read_bytes():
                break
            time.sleep(0.1)
        assert "INR 2,4" in sink_out.read_text()
    finally:
        for proc in (run, sink):
            proc.terminate()
            proc.wait(timeout=30)
