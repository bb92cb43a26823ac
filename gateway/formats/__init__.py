"""Payload normalisation: pure functions on bytes and text, no I/O, no clock.

Rule kept here: every parser in this package is bounded and total. For ANY input it returns a
result or raises a ``gateway.errors.GatewayError`` subclass (``MessageTooBig``,
``LimitExceeded``, ``MalformedError``), whose reply is the SMTP answer; it never writes to disk
and never quotes content in a reason. ``formats`` imports only ``gateway.errors`` (never
``smime`` nor anything above it).

Modules:

* ``mime_limits``: a linear scan of raw MIME bytes (size, headers, parts, depth, addresses,
  parameters) before the ``email`` package parses them; ``parse_message``.
* ``charset``: ``decode_text`` (BOM, declared, UTF-8, detection, MacRoman/CP850 heuristics,
  Windows-1252 fallback, mojibake repair, CRLF) and ``encode_for_apicrypt`` (ISO-8859-1 with
  transliteration, never fails).
* ``hprim``: lossless HPRIM parser and writer, NIR validation.
* ``cda``: N1 (text/PDF) and structured lab CDA R2, and reading them back.
* ``xdm``: IHE XDM archives, built in memory and read with zip and XML bounds.
* ``xmlsafe``: the hardened XML parser (no DOCTYPE, entities, DTD or network).
"""
