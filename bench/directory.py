"""The directory at national scale: 70,000 users in a certificate folder and in LDAP.

    python -m bench.directory [--users 70000] [--messages 300]

Generates ``--users`` recipient certificates (RSA-2048 subject keys, one shared key so that
generation takes seconds; the certificates differ in subject, address and serial as real ones
do) and prints, each phase in a process of its own:

1. folder: ``gateway run --workers 1`` with the mssante ``directory`` holding them: seconds
   to ready (process start to ``gateway.ready``), RSS then; a ``SIGHUP`` reload: seconds to
   ``reload.done``, peak RSS (VmHWM) after it. Targets: ready within 3 s and at most 200 MB,
   reload within 3 s without passing 250 MB.
2. LDAP: the same users loaded into a private slapd with ``slapadd``; the directory
   (``LdapDirectory``) asked for ``--messages`` distinct recipients: milliseconds per cold
   lookup and LDAP queries per recipient (target: one round trip each), then the same again
   warm (no query). Needs slapd (Debian's package).
3. CPU per message with a warm cache: the pipeline (``translate_file``) for ``--messages``
   messages to one recipient, with the development folder (6 users) and with the 70,000-user
   folder, measured in this process alternately. Target: not more than 10 % above.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.relay import rss_mb
from gateway.devpki import free_ports, init_pki

MARIE = "marie.curie@hopital-test.mssante.fr"


def _address(i: int) -> str:
    return f"user{i:06d}@etab{i % 700:03d}.mssante.fr"


def generate(folder: Path, users: int, issuer_cert: x509.Certificate,
             issuer_key: rsa.RSAPrivateKey) -> list[bytes]:
    """``users`` certificates in ``folder`` (one PEM file each); their DER, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    subject_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    now = dt.datetime.now(dt.UTC)
    ders = []
    for i in range(users):
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"User {i}")]))
            .issuer_name(issuer_cert.subject).public_key(subject_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=700))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(_address(i))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .sign(issuer_key, hashes.SHA256()))
        (folder / f"u{i:06d}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        ders.append(cert.public_bytes(serialization.Encoding.DER))
    return ders


def _events(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _wait(path: Path, event: str, count: int = 1, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for e in _events(path) if e.get("event") == event) >= count:
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"no {event} in {path}")


def _current_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def folder_phase(root: Path, users_dir: Path, code: str | None = None) -> None:
    """``code``: another checkout of the gateway to run instead (the figures of before)."""
    config = root / "gateway.toml"
    text = config.read_text().replace('directory = "mssante/users"',
                                      f'directory = "{users_dir}"')
    config.write_text(text)
    log = root / "gateway.log"
    env = {**os.environ, **({"PYTHONPATH": code} if code else {})}
    with log.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--workers", "1",
                                 "--config", str(config)], stderr=out, stdout=out, env=env,
                                cwd=code or None)
    try:
        ready = _wait(log, "gateway.ready") - started
        ready_mb = _current_mb(proc.pid)
        sent = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        reloaded = _wait(log, "reload.done") - sent
        time.sleep(0.5)
        print(f"folder, {len(list(users_dir.iterdir()))} users, one worker"
              + (f" (code in {code})" if code else "") + ":")
        print(f"  ready        {ready:6.2f} s   RSS {ready_mb:6.1f} MB   (target 3 s, 200 MB)")
        print(f"  reload       {reloaded:6.2f} s   peak RSS {rss_mb(proc.pid):6.1f} MB   "
              f"now {_current_mb(proc.pid):6.1f} MB   (target 3 s, 250 MB)")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def ldap_phase(root: Path, ders: list[bytes], messages: int) -> None:
    from gateway.config.settings import LdapConfig
    from gateway.smime.ldap_directory import LdapDirectory
    from tests import slapd

    if not slapd.available():
        print("LDAP: slapd missing, phase skipped")
        return
    port = free_ports(1)[0]
    server = slapd.Slapd(port, root / "mssante" / "next-hop-tls.pem",
                         root / "mssante" / "next-hop-tls.key",
                         root / "mssante" / "ca.pem")
    ldif = root / "users.ldif"
    with ldif.open("w") as out:
        out.write(slapd.base_entries() + "\n")
        for i, der in enumerate(ders):
            out.write(f"dn: uid=u{i},ou=people,{slapd.SUFFIX}\nobjectClass: inetOrgPerson\n"
                      f"uid: u{i}\ncn: u{i}\nsn: u{i}\nmail: {_address(i)}\n"
                      f"userCertificate;binary:: {base64.b64encode(der).decode()}\n\n")
    started = time.monotonic()
    run = subprocess.run(["slapadd", "-q", "-f", str(server.conf), "-l", str(ldif)],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        print("LDAP: slapadd failed:", run.stderr[-500:])
        return
    loaded = time.monotonic() - started
    server.start()
    try:
        ca = root / "mssante" / "ca-bundle.pem"
        ca.write_bytes((root / "mssante" / "ca.pem").read_bytes()
                       + (root / "mssante" / "intermediate.pem").read_bytes())
        directory = LdapDirectory(LdapConfig(url=server.url, base_dn=slapd.SUFFIX, ca_file=ca))
        wanted = [_address(i * (len(ders) // messages)) for i in range(messages)]

        async def cold_then_warm() -> tuple[float, float]:
            times = []
            for address in wanted:
                t = time.perf_counter()
                await directory.prefetch([address])
                times.append(time.perf_counter() - t)
                assert len(directory.lookup(address)) == 1
            t = time.perf_counter()
            await directory.prefetch(wanted)
            return statistics.median(times) * 1000, (time.perf_counter() - t) * 1000

        cold_ms, warm_ms = asyncio.run(cold_then_warm())
        queries = directory.queries
        directory.close()
        print(f"LDAP, {len(ders)} users (slapadd {loaded:.1f} s), {messages} recipients:")
        print(f"  cold lookup  median {cold_ms:6.2f} ms   queries per recipient "
              f"{queries / messages:.2f}   (target: one round trip)")
        print(f"  warm         {warm_ms:6.2f} ms for all {messages} (no query)")
    finally:
        server.remove()


def cpu_phase(root: Path, users_dir: Path, messages: int) -> None:
    from gateway.config import load_config
    from gateway.translate.context import build_runtime
    from gateway.translate.offline import translate_file
    from tests.messages import Pki, text_entity, user_message

    pki = Pki(root)
    small = load_config(root / "gateway.toml.small")
    big = load_config(root / "gateway.toml")
    runtimes = {"6 users": (small, build_runtime(small)), "70k users": (big, build_runtime(big))}
    raw = user_message(pki, "jean.dupont@medical59.apicrypt.org",
                       "marie.curie.mssante@passerelle.apicrypt.org",
                       text_entity("INR 2,4 : contrôle dans 5 jours.\n"))
    at = dt.datetime.now(dt.UTC)
    cpu: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(messages // 20):
        for name, (config, runtime) in runtimes.items():
            t = time.process_time()
            for _ in range(20):
                translate_file(config, runtime, raw, source="apicrypt", at=at)
            cpu[name].append((time.process_time() - t) / 20 * 1000)
    base, scaled = statistics.median(cpu["6 users"]), statistics.median(cpu["70k users"])
    print(f"CPU per message, warm cache ({messages} messages each, alternating):")
    print(f"  6 users      {base:6.2f} ms\n  70k users    {scaled:6.2f} ms   "
          f"({(scaled / base - 1) * 100:+.1f} %, target +10 %)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=70_000)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--before", metavar="CHECKOUT", default=None,
                        help="also run the folder phase with another checkout's code")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="passerelle-bench-directory-"))
    try:
        ports = free_ports(4)
        init_pki(root / "pki", force=True, apicrypt_port=ports[0], apicrypt_relay_port=ports[1],
                 mssante_port=ports[2], mssante_relay_port=ports[3])
        pki = root / "pki"
        shutil.copy(pki / "gateway.toml", pki / "gateway.toml.small")
        issuer = x509.load_pem_x509_certificate((pki / "mssante" / "intermediate.pem")
                                                .read_bytes())
        key = serialization.load_pem_private_key(
            (pki / "mssante" / "intermediate.key").read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        users = root / "users"
        t = time.monotonic()
        ders = generate(users, args.users, issuer, key)
        shutil.copy(pki / "mssante" / "users" / f"{MARIE}.pem", users / "marie.pem")
        print(f"generated {args.users} certificates in {time.monotonic() - t:.1f} s")
        folder_phase(pki, users)
        if args.before:
            folder_phase(pki, users, args.before)
        ldap_phase(pki, ders, args.messages)
        cpu_phase(pki, users, args.messages)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
