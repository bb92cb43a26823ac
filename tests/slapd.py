"""A throw-away OpenLDAP server for tests: Debian's slapd with its own schema files, a private
configuration (slapd.conf: the core, cosine and inetorgperson schemas the package ships, one
mdb database), TLS for StartTLS from the test's PKI, on a loopback port. Entries are added
with the package's ldapadd/ldapmodify, as an operator would. Every wait is bounded.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SLAPD = "/usr/sbin/slapd"
SUFFIX = "dc=sante,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "secret-for-tests"


def available() -> bool:
    return Path(SLAPD).exists() and shutil.which("ldapadd") is not None


class Slapd:
    def __init__(self, port: int, tls_cert: Path, tls_key: Path, ca_file: Path) -> None:
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="passerelle-slapd-"))
        (self.root / "db").mkdir()
        for name, src in (("tls.pem", tls_cert), ("tls.key", tls_key), ("ca.pem", ca_file)):
            shutil.copy(src, self.root / name)
        self.conf = self.root / "slapd.conf"
        self.conf.write_text(f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {self.root}/slapd.pid
argsfile {self.root}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCertificateFile {self.root}/tls.pem
TLSCertificateKeyFile {self.root}/tls.key
TLSCACertificateFile {self.root}/ca.pem
database mdb
maxsize 1073741824
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PW}
directory {self.root}/db
index objectClass,mail eq
access to * by * read
""")
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"ldap://127.0.0.1:{port}"

    def start(self) -> None:
        log = (self.root / "slapd.log").open("ab")
        self.process = subprocess.Popen(
            [SLAPD, "-f", str(self.conf), "-h", f"ldap://127.0.0.1:{self.port}/", "-d", "0"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            assert self.process.poll() is None, (self.root / "slapd.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert time.monotonic() < deadline, "slapd did not listen"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _ldap(self, tool: str, ldif: str) -> None:
        run = subprocess.run([tool, "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW],
                             input=ldif.encode(), capture_output=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr.decode(errors="replace")

    def add(self, ldif: str) -> None:
        self._ldap("ldapadd", ldif)

    def modify(self, ldif: str) -> None:
        self._ldap("ldapmodify", ldif)


def base_entries() -> str:
    return (f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Sante test\n"
            f"dc: sante\n\ndn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\n"
            "ou: people\n")


def person(uid: str, mail: str, certificates: list[bytes]) -> str:
    """An inetOrgPerson with ``mail`` and DER certificates in ``userCertificate;binary``."""
    lines = [f"dn: uid={uid},ou=people,{SUFFIX}", "objectClass: inetOrgPerson",
             f"uid: {uid}", f"cn: {uid}", f"sn: {uid}", f"mail: {mail}"]
    lines += [f"userCertificate;binary:: {base64.b64encode(der).decode()}"
              for der in certificates]
    return "\n".join(lines) + "\n"


def replace_certificate(uid: str, der: bytes) -> str:
    return (f"dn: uid={uid},ou=people,{SUFFIX}\nchangetype: modify\n"
            f"replace: userCertificate;binary\n"
            f"userCertificate;binary:: {base64.b64encode(der).decode()}\n")
