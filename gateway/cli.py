"""The command line: run, demo, translate, inspect, trace, pki init, check-config (DESIGN §5).

Rule kept here: the CLI parses arguments, calls one function, prints its result and maps
failures to exit codes — 0 success, 1 the message would be refused, 2 configuration or usage
error. Heavy imports happen inside each command so that ``gateway --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import Config

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_CONFIG = 2


def _cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.errors import ConfigError

    try:
        config = load_config(Path(args.file))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return EXIT_CONFIG
    for warning in [*config.warnings, *_unusable_trust(config)]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.file}: OK")
    return EXIT_OK


def _unusable_trust(config: Config) -> list[str]:
    """Anchors and intermediates no chain could use (config is below S/MIME: judged here)."""
    import datetime as dt

    from gateway.config import read_certificates
    from gateway.smime.trust import describe, unusable_certificates

    out = []
    now = dt.datetime.now(dt.UTC)
    for name, net in config.networks.items():
        files = [(f"networks.{name}.trust_anchors", p) for p in net.trust_anchors]
        files += [(f"networks.{name}.intermediates", p) for p in net.intermediates]
        loaded = [(key, cert) for key, path in files for cert in read_certificates(path)]
        anchors = [c for key, c in loaded if key.endswith("trust_anchors")]
        inters = [c for key, c in loaded if key.endswith("intermediates")]
        keys = {id(c): key for key, c in loaded}
        for cert, why in unusable_certificates(anchors, inters, now):
            out.append(f"{config.path}: {keys[id(cert)]}: {why} ({describe(cert)}): "
                       "no chain can use it")
    return out


def _cmd_pki_init(args: argparse.Namespace) -> int:
    from gateway.devpki import init_pki, pki_summary

    target = Path(args.dir)
    try:
        config_path = init_pki(target, hostname=args.hostname, force=args.force,
                               metrics_listen=args.metrics_listen or None)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(pki_summary(target))
    print(f"\nconfiguration written to {config_path}")
    print(f"next: gateway check-config {config_path}")
    print(f"then: gateway run --config {config_path}   (and gateway demo-sink --config "
          f"{config_path} as the next hops, gateway send to send a first message)")
    return EXIT_OK


def _cmd_send(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.devtools import send
    from gateway.errors import ConfigError

    try:
        return asyncio.run(send(Path(args.config), args.sender, args.rcpt, args.text))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyError as exc:
        print(f"error: {exc} is not a sample user of the development PKI", file=sys.stderr)
        return EXIT_CONFIG


def _cmd_demo_sink(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.devtools import sink

    try:
        return asyncio.run(sink(Path(args.config)))
    except KeyboardInterrupt:
        return EXIT_OK


def _load(config_file: str) -> tuple[object, object] | int:
    from gateway.config import load_config
    from gateway.errors import ConfigError
    from gateway.translate.context import build_runtime

    try:
        config = load_config(Path(config_file))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    return config, build_runtime(config)


def _read_message(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def _cmd_translate(args: argparse.Namespace) -> int:
    from gateway.errors import GatewayError
    from gateway.translate.offline import translate_file

    loaded = _load(args.config)
    if isinstance(loaded, int):
        return loaded
    config, runtime = loaded
    try:
        raw = _read_message(args.message)
    except OSError as exc:
        print(f"error: cannot read {args.message}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = translate_file(config, runtime, raw, source=args.source,  # type: ignore[arg-type]
                                recipients=args.rcpt or None)
    except GatewayError as exc:
        print(f"refused: {exc.reply} ({exc.code}: {exc.reason})", file=sys.stderr)
        return EXIT_REFUSED
    sys.stdout.buffer.write(result.raw)
    sys.stdout.buffer.flush()
    if len(result.copies) > 1:  # Bcc copies: the first is the one the To/Cc readers get
        print(f"note: {len(result.copies)} sealed copies (one per Bcc recipient); only the"
              " first is written", file=sys.stderr)
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from gateway.translate.offline import inspect_message

    loaded = _load(args.config)
    if isinstance(loaded, int):
        return loaded
    config, runtime = loaded
    try:
        raw = _read_message(args.message)
    except OSError as exc:
        print(f"error: cannot read {args.message}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    report = inspect_message(config, runtime, raw, source=args.source)  # type: ignore[arg-type]
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return EXIT_OK if report.get("relayable") else EXIT_REFUSED


def _cmd_run(args: argparse.Namespace) -> int:
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    shared_metrics = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # The workers' metrics are summed through files in this directory: prometheus-client
        # reads the variable once, when it is first imported, so before gateway.app is.
        # A tmpfs: numbers only, and nothing left on a disk.
        shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a private (0700) directory in it
        parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        shared_metrics = tempfile.mkdtemp(prefix="passerelle-metrics-", dir=parent)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared_metrics
    try:
        from gateway.app import run

        return run(Path(args.config), workers=workers)
    finally:
        if shared_metrics is not None:
            shutil.rmtree(shared_metrics, ignore_errors=True)


def _cmd_trace(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.errors import ConfigError
    from gateway.obs import keyed_pseudonym
    from gateway.story import find, parse_lines, render, tokens_for

    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    key_file = config.gateway.pseudonym_key_file
    if key_file is None:
        print("error: gateway.pseudonym_key_file is not set: the gateway hashed addresses "
              "with a random key per process, which cannot be recomputed", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with Path(args.logfile).open(encoding="utf-8", errors="replace") as log_lines:
            events = parse_lines(log_lines)
    except OSError as exc:
        print(f"error: cannot read {args.logfile}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    stories = find(events, tokens_for(args.query, keyed_pseudonym(
        key_file.read_bytes().strip())))
    for story in stories:
        print(render(story))
    if not stories:
        print("no message found", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import demo

    return demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Passerelle: S/MIME gateway between the apicrypt and mssante networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the gateway until SIGTERM/SIGINT")
    p.add_argument("--config", required=True, metavar="FILE")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes sharing the ports (default: one per core)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="self-contained demonstration on loopback")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("translate", help="run the pipeline offline; the result goes to stdout")
    p.add_argument("--config", required=True, metavar="FILE")
    p.add_argument("--from", dest="source", required=True, choices=("apicrypt", "mssante"),
                   help="the network the message comes from")
    p.add_argument("--rcpt", action="append", metavar="ADDRESS",
                   help="envelope recipient (default: the To/Cc addresses of the message)")
    p.add_argument("message", metavar="IN.eml", help="the message file, or - for stdin")
    p.set_defaults(func=_cmd_translate)

    p = sub.add_parser("inspect", help="JSON report of a message's security layers")
    p.add_argument("--config", required=True, metavar="FILE")
    p.add_argument("--from", dest="source", choices=("apicrypt", "mssante"), default=None,
                   help="the network the message comes from (default: from its From domain)")
    p.add_argument("message", metavar="MSG.eml", help="the message file, or - for stdin")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("pki", help="development PKI")
    pki = p.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    q = pki.add_parser("init", help="write a development PKI and a ready config into DIR "
                       "(default: certs/dev, which git ignores)")
    q.add_argument("dir", metavar="DIR", nargs="?", default="certs/dev")
    q.add_argument("--hostname", default="passerelle.localhost")
    q.add_argument("--metrics-listen", default="127.0.0.1:9108", metavar="HOST:PORT",
                   help="metrics_listen written in the configuration ('' for none)")
    q.add_argument("--force", action="store_true", help="overwrite a non-empty DIR")
    q.set_defaults(func=_cmd_pki_init)

    p = sub.add_parser("send", help="development PKI: sign and encrypt one message as a sample "
                       "user and send it to the gateway (a first message by hand)")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="the configuration `gateway pki init` wrote")
    p.add_argument("--from", dest="sender", default="jean.dupont@medical59.apicrypt.org",
                   metavar="ADDRESS", help="a sample user (default: %(default)s)")
    p.add_argument("--to", dest="rcpt", default="marie.curie@hopital-test.mssante.fr",
                   metavar="ADDRESS", help="a sample user of the other network, or an alias "
                   "(default: %(default)s)")
    p.add_argument("--text", default="INR 2,4 : contrôle dans 5 jours.",
                   help="the text of the message")
    p.set_defaults(func=_cmd_send)

    p = sub.add_parser("demo-sink", help="development PKI: both networks' next hops on the "
                       "configured relay addresses; prints what each recipient reads")
    p.add_argument("--config", required=True, metavar="FILE")
    p.set_defaults(func=_cmd_demo_sink)

    p = sub.add_parser("trace", help="one message's story from a JSON log: was it delivered, "
                       "and where (by an address or a Message-ID)")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="the gateway's configuration (for its pseudonym_key_file)")
    p.add_argument("logfile", metavar="LOGFILE")
    p.add_argument("query", metavar="ADDRESS|MESSAGE-ID")
    p.set_defaults(func=_cmd_trace)

    p = sub.add_parser("check-config", help="validate a configuration and the files it names")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=_cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
