"""Offline uses of the pipeline: ``gateway translate`` and ``gateway inspect``.

Rule kept here: same pipeline, same checks, same errors as the live relay; only the envelope
is taken from the message's headers instead of an SMTP session, and the time is "now".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import functools
from typing import Any

from cryptography import x509

from gateway import errors
from gateway.config import Config, other
from gateway.obs import new_trace_id
from gateway.smime.mime import parse_entity
from gateway.smime.model import Layer, Signer
from gateway.smime.unwrap import unwrap
from gateway.translate import routing
from gateway.translate.context import Runtime
from gateway.translate.normalise import normalise
from gateway.translate.pipeline import Translation, translate

_MAX_LISTED = 1000


def _header_addresses(raw: bytes, names: tuple[str, ...]) -> list[str]:
    entity = parse_entity(raw)
    values = [v for n in names if (v := entity.get(n)) is not None]
    return [a for _, a in email.utils.getaddresses(values) if a][:_MAX_LISTED]


def guess_source(runtime: Runtime, raw: bytes) -> str | None:
    """The network whose domains hold the From address, if exactly one does."""
    found = _header_addresses(raw, ("From",))
    if len(found) != 1:
        return None
    for name in runtime.networks:
        try:
            runtime.check_sender(name, found[0])
        except errors.GatewayError:
            continue
        return name
    return None


def translate_file(config: Config, runtime: Runtime, raw: bytes, *, source: str,
                   recipients: list[str] | None = None,
                   at: dt.datetime | None = None) -> Translation:
    if len(raw) > config.gateway.max_message_bytes:
        raise errors.MessageTooBig(f"{len(raw)} bytes over the limit")
    table = runtime.routing
    sender_header = _header_addresses(raw, ("From",))
    if len(sender_header) != 1:
        raise errors.SignerMismatch("From header must hold exactly one address")
    mail_from = runtime.check_sender(source, sender_header[0])
    wanted = recipients or _header_addresses(raw, ("To", "Cc"))
    if len(wanted) > config.gateway.max_recipients:
        raise errors.GatewayError("too many recipients", reply=errors.TOO_MANY_RECIPIENTS)
    routed = [routing.route_recipient(table, source, r) for r in wanted]
    if hasattr(runtime.network(other(source)).directory, "prefetch"):  # LDAP: ask it first
        asyncio.run(runtime.prefetch(source, mail_from, routed))
    moment = at or dt.datetime.now(dt.UTC)
    return translate(
        raw,
        source=runtime.network(source),
        destination=runtime.network(other(source)),
        mail_from=runtime.reverse_sender(source, mail_from),
        recipients=routed,
        map_sender=functools.partial(runtime.reverse_sender, source),
        map_recipient=functools.partial(runtime.route_recipient, source),
        at=moment,
        hostname=config.gateway.hostname,
        trace_id=new_trace_id(),
        normalise=functools.partial(normalise, at=moment),
        max_depth=config.gateway.max_depth,
        max_signing_age=config.gateway.max_signing_age,
        known_names=runtime.names,
    )


def _cert_report(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _signer_report(signer: Signer) -> dict[str, Any]:
    return {
        **_cert_report(signer.certificate),
        "addresses": sorted(signer.addresses),
        "digest": signer.digest_algorithm,
        "signature": signer.signature_algorithm,
        "signing_time": signer.signing_time,
        "chain": [c.subject.rfc4514_string() for c in signer.chain],
    }


def _layer_report(layer: Layer) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": layer.kind, **layer.detail}
    if layer.signer is not None:
        out["signature"] = "pass"
        out["signer"] = _signer_report(layer.signer)
    return out


def inspect_message(config: Config, runtime: Runtime, raw: bytes,
                    source: str | None = None) -> dict[str, Any]:
    """A JSON-able report of the message's security layers and of what would happen to it."""
    report: dict[str, Any] = {"size": len(raw), "source": source, "layers": [], "problems": []}
    try:
        outer = parse_entity(raw)
        report["content_type"] = outer.get("Content-Type")
        source = source or guess_source(runtime, raw)
        report["source"] = source
        if source is None:
            raise errors.SenderRefused("the From address belongs to neither network")
        network = runtime.network(source)
        report["gateway_identity"] = _cert_report(network.identity.certificate)
        trace: list[Layer] = []
        try:
            unwrapped = unwrap(raw, [network.identity], network.store, dt.datetime.now(dt.UTC),
                               max_depth=config.gateway.max_depth, trace=trace)
        finally:
            report["layers"] = [_layer_report(layer) for layer in trace]
        report["encrypted"] = unwrapped.encrypted
        report["signed"] = unwrapped.signer is not None
        translate_file(config, runtime, raw, source=source)
    except errors.GatewayError as exc:
        report["problems"].append(
            {"error": exc.code, "reason": exc.reason, "reply": str(exc.reply)})
    report["relayable"] = not report["problems"]
    return report
