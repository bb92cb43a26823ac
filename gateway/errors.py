"""The typed errors of the gateway; each one carries the SMTP reply it stands for.

Rule kept here: a failure anywhere below the transports is one of these types, and its reply
is decided here, once. The SMTP adapter never invents a reply; an exception that is not a
``GatewayError`` is answered ``451 4.3.0`` (DESIGN §6). Errors are typed by who is at fault,
like h11's ``LocalProtocolError`` / ``RemoteProtocolError``:

* ``SenderError``: the message or the envelope is at fault; permanent (5xx). This set is the
  explicit allow-list of permanent causes; everything else defers.
* ``TransientError``: our side or the next hop is at fault; the sender should retry (4xx).

Reasons (``str(error)``) are written for the operator's log: they never contain message content,
subjects, names or clear addresses.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: basic code, enhanced status code (RFC 3463) and text."""

    code: int
    status: str
    text: str

    def __str__(self) -> str:
        if not self.status:  # an intermediate reply (354) has no enhanced status (RFC 3463)
            return f"{self.code} {self.text}"
        return f"{self.code} {self.status} {self.text}"

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500


# Named replies (DESIGN §6). Transports answer with these, never with literals of their own.
OK = Reply(250, "2.0.0", "OK: relayed")
RECIPIENT_NOT_ALLOWED = Reply(550, "5.7.1", "Relaying denied: recipient not reachable here")
SENDER_NOT_ALLOWED = Reply(550, "5.7.1", "Sender does not belong to this network")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message too big")
NOT_ENCRYPTED = Reply(550, "5.7.5", "Message is not S/MIME encrypted for this gateway")
CRYPTO_UNSUPPORTED = Reply(550, "5.7.5", "Cryptographic algorithm not accepted")
SIGNATURE_REFUSED = Reply(550, "5.7.7", "Signature could not be verified")
RECIPIENT_CERT_UNKNOWN = Reply(550, "5.7.1", "No valid certificate for recipient")
DIRECTORY_UNAVAILABLE = Reply(451, "4.4.3", "Certificate directory unavailable, try again later")
REVOCATION_UNKNOWN = Reply(451, "4.7.5", "No fresh CRL to judge the certificate, try again later")
MALFORMED = Reply(550, "5.6.0", "Malformed message content")
DOWNSTREAM_DEFERRED = Reply(451, "4.4.0", "Next hop unavailable, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
RATE_LIMITED = Reply(451, "4.7.0", "Too many messages from this sender, slow down")
# Every failure after an unauthenticated (CBC) decryption: padding, MIME, signature, policy
# alike, so that the reply is no oracle on the plaintext (the log keeps the precise reason).
CONTENT_REFUSED = Reply(550, "5.7.0", "Message could not be opened, verified or read")
SUSPECT_HELD_OFF = Reply(451, "4.7.0", "Too many refused messages from this client, try later")

# SMTP session (gateway.transport.smtp_in): the listener's own replies
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
BARE_NEWLINE = Reply(550, "5.5.2", "Bare CR or LF not allowed")
NUL_NOT_ALLOWED = Reply(550, "5.6.0", "NUL character not allowed in message")
TOO_MANY_SESSIONS = Reply(421, "4.7.0", "Too many connections, try again later")
STARTTLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
CLIENT_CERT_REFUSED = Reply(554, "5.7.1", "Client certificate required or not trusted")
NON_ASCII_COMMAND = Reply(553, "5.6.7", "Non-ASCII address or argument without SMTPUTF8")
COMMAND_TOO_LONG = Reply(500, "5.5.2", "Command line too long")
TEXT_LINE_TOO_LONG = Reply(500, "5.5.2", "Message line too long (RFC 5321 4.5.3.1.6)")
MALFORMED_ADDRESS = Reply(553, "5.1.3", "Malformed address")
TIMEOUT_CLOSING = Reply(421, "4.4.2", "Timeout, closing connection")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
COMMAND_UNRECOGNISED = Reply(500, "5.5.1", "Command not recognized")
CLIENT_CLOSED = Reply(421, "4.4.2", "Connection closed by client, closing")
NEED_RECIPIENT = Reply(503, "5.5.1", "Error: need RCPT command")
STARTTLS_TOO_LATE = Reply(421, "4.7.0", "No STARTTLS in time, closing connection")
SESSION_TOO_LONG = Reply(421, "4.4.2", "Session too long, closing connection")
TOO_MANY_IDLE_COMMANDS = Reply(421, "4.7.0", "Too many commands without a message, closing")
IDLE_SESSION_DROPPED = Reply(421, "4.7.0", "Listener full: idle connection closed")
# PROXY v2 LOCAL / v1 UNKNOWN: the balancer's own connection (a health check) carries no mail
HEALTH_CHECK_NO_MAIL = Reply(503, "5.5.1", "Balancer health check connection: no mail")
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA")

# next hop (gateway.transport.smtp_out): why a relay did not happen, or what the hop said
NEXT_HOP_UNREACHABLE = Reply(451, "4.4.1", "Next hop not reachable, try again later")
NEXT_HOP_TIMEOUT = Reply(451, "4.4.2", "Next hop timed out or disconnected, try again later")
NEXT_HOP_NO_TLS = Reply(451, "4.7.5", "Next hop TLS failed or not offered, try again later")
NEXT_HOP_DEFERRED = DOWNSTREAM_DEFERRED  # the next hop answered 4xx
NEXT_HOP_REFUSED_TEXT = "Next hop refused:"  # before the hop's own (sanitised) words


def next_hop_refused(code: int, status: str | None, said: str) -> Reply:
    """The next hop's 5xx mirrored, with its sanitised words after our fixed prefix."""
    return Reply(code, status or "5.0.0", f"{NEXT_HOP_REFUSED_TEXT} {said}".rstrip())


def traced(reply: Reply, trace_id: str) -> Reply:
    """The reply to a message with the gateway's trace id, so that the sending MTA's log
    (which keeps the reply text) leads to the gateway's events of that message."""
    return Reply(reply.code, reply.status, f"{reply.text} [trace {trace_id}]")


def relayed(said: str) -> Reply:
    """``OK``, followed by the next hop's own words (its queue id) when it said any."""
    return Reply(OK.code, OK.status, f"{OK.text} ({said})" if said else OK.text)

# addresses (the envelope policy, gateway.translate.routing and gateway.config.addresses)
NULL_SENDER_REFUSED = Reply(550, "5.7.1",
                            "Null sender not accepted: only signed user mail is relayed")
SENDER_NOT_REVERSIBLE = Reply(550, "5.7.1",
                              "Sender has no address on the destination network")
MALFORMED_RECIPIENT = Reply(553, "5.1.3", "Recipient address not accepted: bad syntax")
MALFORMED_SENDER = Reply(553, "5.1.7", "Sender address not accepted: bad syntax")


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose. ``reply`` is what to answer."""

    reply: Reply = LOCAL_ERROR

    def __init__(self, reason: str, *, reply: Reply | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if reply is not None:
            self.reply = reply

    @property
    def code(self) -> str:
        """A stable, machine-readable name for logs and reports."""
        return type(self).__name__


class SenderError(GatewayError):
    """The message or its envelope is at fault: a permanent refusal."""

    reply = MALFORMED


class TransientError(GatewayError):
    """Our side or the next hop is at fault: the sender keeps the message and retries."""

    reply = LOCAL_ERROR


# --- sender's fault (5xx) -------------------------------------------------------------------


class MalformedError(SenderError):
    """Unparseable MIME, CMS, certificate, archive or document."""

    reply = MALFORMED


class LimitExceeded(SenderError):
    """A bound (depth, part count, header size, ratio...) tripped before work was done."""

    reply = MALFORMED


class MessageTooBig(SenderError):
    reply = MESSAGE_TOO_BIG


class NotEncrypted(SenderError):
    """The message is not S/MIME encrypted: the gateway does not relay clear mail."""

    reply = NOT_ENCRYPTED


class NotForGateway(SenderError):
    """Encrypted, but for none of the gateway's identities (or the key does not open it)."""

    reply = NOT_ENCRYPTED


class UnsupportedAlgorithm(SenderError):
    """An algorithm the gateway refuses (3DES, SHA-1, unknown OIDs)."""

    reply = CRYPTO_UNSUPPORTED


class SignatureError(SenderError):
    """Base for every reason a signature is refused."""

    reply = SIGNATURE_REFUSED


class NotSigned(SignatureError):
    pass


class BadSignature(SignatureError):
    """Digest or signature value does not match: content tampered with or forged."""


class UntrustedSigner(SignatureError):
    """No chain to the source network's trust anchors, or the chain is invalid."""


class RevokedSigner(SignatureError):
    pass


class ExpiredSigner(SignatureError):
    """The signer's certificate (or one in its chain) is expired or not yet valid."""


class WeakAlgorithm(SignatureError):
    """SHA-1 or another refused digest / signature algorithm."""


class SignatureTooOld(SignatureError):
    """The signingTime is older than ``max_signing_age``: an old message replayed."""


class SignerMismatch(SignatureError):
    """The From address is not an address of the signer's certificate."""


class SignerCountError(SignatureError):
    """Zero or several signers: the gateway accepts exactly one."""


class CertificateUsageError(SignatureError):
    """Key usage or extended key usage does not allow S/MIME signing."""


class ContentRefused(SenderError):
    """Any refusal after a CBC decryption, one reply for all (no padding oracle); ``reason``
    keeps the precise cause for the log."""

    reply = CONTENT_REFUSED


class RecipientRefused(SenderError):
    reply = RECIPIENT_NOT_ALLOWED


class SenderRefused(SenderError):
    reply = SENDER_NOT_ALLOWED


class RecipientCertificateError(SenderError):
    """The recipient's certificate is unknown, expired, revoked or not for encryption."""

    reply = RECIPIENT_CERT_UNKNOWN


class DownstreamRejected(SenderError):
    """The next hop answered 5xx; the reply mirrors it (set per instance)."""


# --- our side or the next hop (4xx) ---------------------------------------------------------


class DirectoryUnavailable(TransientError):
    reply = DIRECTORY_UNAVAILABLE


class RevocationUnknown(TransientError):
    """``crl_policy = "fail-closed"``: no fresh CRL of an issuer in the chain is loaded."""

    reply = REVOCATION_UNKNOWN


class DownstreamUnavailable(TransientError):
    """Next hop refused, timed out, failed TLS or answered 4xx."""

    reply = DOWNSTREAM_DEFERRED


class RateLimited(TransientError):
    reply = RATE_LIMITED


class InternalError(TransientError):
    reply = LOCAL_ERROR


def reply_for(error: BaseException) -> Reply:
    """The reply to give for any exception: its own for ours, ``451 4.3.0`` for the rest."""
    if isinstance(error, GatewayError):
        return error.reply
    return LOCAL_ERROR


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a configuration: the file, the key (dotted path) and what is wrong."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class ConfigError(Exception):
    """A configuration that cannot be used; holds every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
