"""A real Dovecot (IMAPS) on a free loopback port, with a throw-away configuration.

Rule kept here: the system's Dovecot service and its configuration are never touched. Every
file (config, TLS key, passwd file, state, logs, mail) lives in one temporary folder that the
fixture removes; the server is stopped by the PID in ``base_dir/master.pid``.

Dovecot runs as root here, but its userdb must not hand out uid 0: the mail user is ``nobody``
and the folder is made traversable for it (pytest's own tmp folders are 0700 root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from gateway.smime.certgen import make_ca, make_leaf
from tests.ports import free_port

DOVECOT = "/usr/sbin/dovecot"
HOST = "localhost"  # the TLS certificate names "localhost"; /etc/hosts maps it to 127.0.0.1

CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{root}/tls.pem
ssl_key = <{root}/tls.key
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
{namespace}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""


@dataclass
class Dovecot:
    """A running server: where it listens, who may log in, and the CA that signed its cert."""

    root: Path
    port: int
    user: str
    password: str
    ca_file: Path
    password_file: Path
    host: str = HOST
    delimiter: str = "."  # the hierarchy separator of its layout

    def folder(self, configured: str) -> str:
        """A configured ``A/B`` folder as this server names it."""
        return configured.replace("/", self.delimiter)

    @property
    def pid(self) -> int | None:
        try:
            return int((self.root / "run" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        # The daemon keeps inherited descriptors: no pipes, or run() waits for it to exit.
        with (self.root / "start.err").open("wb") as err:
            subprocess.run([DOVECOT, "-c", str(self.root / "dovecot.conf")], check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                           timeout=20)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("dovecot did not start: " + self.log()[-2000:])

    def stop(self) -> None:
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            (self.root / "run" / "master.pid").unlink()

    def log(self) -> str:
        try:
            return (self.root / "dovecot.log").read_text(errors="replace")
        except OSError:
            return ""


# The inbox namespace as Debian's dovecot-core ships it (conf.d/10-mail.conf: ``inbox = yes``,
# separator and prefix left to their defaults): with Maildir, the Maildir++ layout, "." as the
# hierarchy separator. LAYOUTS vary from there; nothing is tuned to the gateway.
LAYOUTS = {
    "default": ("namespace inbox {\n  inbox = yes\n}\n", "."),
    "slash": ("namespace inbox {\n  inbox = yes\n  separator = /\n}\n", "/"),
}


def make_dovecot(user: str = "passerelle", layout: str = "default") -> Dovecot:
    """Write a configuration into a fresh folder (not started yet)."""
    namespace, delimiter = LAYOUTS[layout]
    root = Path(tempfile.mkdtemp(prefix="passerelle-dovecot-"))
    root.chmod(0o755)
    account = pwd.getpwnam("nobody")
    ca = make_ca("Dovecot test CA")
    leaf = make_leaf(ca, "localhost", dns_names=["localhost"], key_usage="tls")
    pem = serialization.Encoding.PEM
    (root / "ca.pem").write_bytes(ca.certificate.public_bytes(pem))
    (root / "tls.pem").write_bytes(leaf.certificate.public_bytes(pem))
    key = root / "tls.key"
    key.write_bytes(leaf.key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key.chmod(0o600)
    password = secrets.token_hex(12)
    passwd = root / "passwd"
    passwd.write_text(f"{user}:{{PLAIN}}{password}\n")
    passwd.chmod(0o644)
    password_file = root / "imap-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    home = root / "home" / user
    home.mkdir(parents=True)
    for path in (root / "home", home):
        os.chown(path, account.pw_uid, account.pw_gid)
    port = free_port()
    group = "nogroup"
    (root / "dovecot.conf").write_text(CONFIG.format(
        root=root, port=port, uid=account.pw_uid, gid=account.pw_gid,
        user="dovenull" if _exists("dovenull") else "nobody", group=group,
        namespace=namespace))
    return Dovecot(root=root, port=port, user=user, password=password,
                   ca_file=root / "ca.pem", password_file=password_file, delimiter=delimiter)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def running_dovecot(user: str = "passerelle", layout: str = "default") -> Iterator[Dovecot]:
    server = make_dovecot(user, layout)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
