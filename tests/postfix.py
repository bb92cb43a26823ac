"""A throw-away Postfix instance for tests: the package's own main.cf and master.cf, varied
only by ``postconf -e`` settings the test names, with its queue, data and log in a temp dir.

Rule kept here: the peer is Postfix as Debian ships it (``/etc/postfix/main.cf`` and
``master.cf`` copied as they are), so a test meets its defaults (parent_domain_matches_
subdomains, TLS levels, queue behaviour) rather than a configuration tuned to the gateway.
What a private instance needs besides: a ``queue_directory`` and ``data_directory`` of its
own (``postfix set-permissions`` gives them to the postfix user), ``maillog_file`` (no syslog
here) with its prefix allowed, loopback only, and one smtpd on a free port. Every wait is
bounded.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
TIMEOUT = 30.0


class Postfix:
    def __init__(self, port: int, settings: dict[str, str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="passerelle-postfix-"))
        self.root.chmod(0o755)  # the postfix user walks to its queue
        self.conf = self.root / "conf"
        self.conf.mkdir()
        shutil.copy("/etc/postfix/main.cf", self.conf / "main.cf")
        shutil.copy("/etc/postfix/master.cf", self.conf / "master.cf")
        self.port = port
        self.log = self.root / "maillog"
        (self.root / "data").mkdir()
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.root / "data", postfix_user.pw_uid, postfix_user.pw_gid)
        own = {
            "queue_directory": str(self.root / "queue"),
            "data_directory": str(self.root / "data"),
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(self.root),
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "myhostname": "mx.postfix.test",
        }
        self.postconf(*(f"{k}={v}" for k, v in {**own, **settings}.items()))
        master = (self.conf / "master.cf").read_text()
        # the packaged smtpd on port 25 is replaced by one on the test's loopback port
        master = "\n".join(("#" + line if line.startswith("smtp      inet") else line)
                           for line in master.splitlines())
        master += f"\n127.0.0.1:{port} inet n - n - - smtpd\n"
        (self.conf / "master.cf").write_text(master)

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*args], capture_output=True, text=True, timeout=TIMEOUT,
                              check=False, env={**os.environ, "MAIL_CONFIG": str(self.conf)})

    def postconf(self, *settings: str) -> None:
        run = self.command("postconf", "-c", str(self.conf), "-e", *settings)
        assert run.returncode == 0, run.stderr

    def start(self) -> None:
        (self.root / "queue").mkdir(exist_ok=True)
        for verb in ("set-permissions", "start"):
            run = self.command(POSTFIX, "-c", str(self.conf), verb)
            assert run.returncode == 0, f"postfix {verb}: {run.stderr}{self.maillog()[-2000:]}"
        deadline = time.monotonic() + TIMEOUT
        while "daemon started" not in self.maillog():
            assert time.monotonic() < deadline, self.maillog()
            time.sleep(0.1)

    def stop(self) -> None:
        self.command(POSTFIX, "-c", str(self.conf), "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def maillog(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def queue(self) -> str:
        return self.command("postqueue", "-c", str(self.conf), "-p").stdout

    def flush(self) -> None:
        run = self.command("postqueue", "-c", str(self.conf), "-f")
        assert run.returncode == 0, run.stderr

    def wait_log(self, text: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.maillog():
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.maillog()}"
            time.sleep(0.1)
        return self.maillog()
