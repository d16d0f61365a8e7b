"""TLS for the etcd client: the one SSL context every connection of etcd.Etcd uses, and a
TLS failure in words.

`client_context(ca, (cert, key))` verifies the members against the CA bundle `ca` (None: the
system's CAs) and presents the client certificate `cert` with its key `key` where given; it
reads the files at once, so a missing, unreadable or malformed file, or a key readable by
every user, is an Invalid naming the `[cluster]` key and the path (the daemon refuses to
start). `tls_failure(url, exc, context)` says what TLS did under an httpx transport failure,
as a MemberFailed (None where it was not TLS): nothing was sent where the handshake failed
(the member's certificate did not verify: unknown CA, wrong host name) or where the member
refused this client's certificate (none, or not of its CA): a refusal (`tls_refused`) that
trying again does not mend, so a call fails once every member refused it (etcd.py); another
alert ending a handshake (the member's internal error) sent nothing either, but may pass. Any
other TLS error breaking a written request (a damaged record) leaves its outcome unknown.
Under TLS 1.3 the member refuses a client certificate after the client's handshake has
ended, as an alert that httpx may lose (httpcore drops a failed write's error and then
reads a broken stream); for a stream of an https member that broke without a TLS error,
`tls_failure` opens a fresh TLS connection to the member and reads its alert, for at most
PROBE_S; only an alert refusing the client's certificate counts there (a verification
failure on the fresh connection says nothing of the first). That probe costs up to PROBE_S
whenever a live member breaks an https connection without a TLS error. Not etcd's
authentication (user and password): that is etcd's own, over this.
"""
import ssl
import urllib.parse

import httpx
import trio

from ..kernel.errors import Invalid
from .etcd_records import MemberFailed
from .secretfile import read_private

ETCD_GRANT = "act as this node towards etcd"  # what a world-readable key or password would let its reader do
PROBE_S = 0.5  # the longest a fresh connection waits for a member's TLS alert (it comes at once)
# The words of the alerts by which a member refuses this client's certificate (OpenSSL's reasons).
CERTIFICATE_ALERTS = ("certificate required", "bad certificate", "unknown ca", "certificate expired",
                      "certificate revoked", "unsupported certificate")


def client_context(ca: str | None = None, certificate: tuple[str, str] | None = None) -> ssl.SSLContext:
    """The SSL context of the etcd client's connections, with the client certificate's (cert, key)
    files if given; Invalid naming the key whose file is bad."""
    try:
        context = ssl.create_default_context(cafile=readable("etcd_ca", ca) if ca is not None else None)
    except ssl.SSLError as exc:
        raise Invalid(f"config: cluster.etcd_ca: {ca} holds no PEM certificate ({exc.reason or exc})") from None
    except OSError as exc:  # gone since `readable` (a renewal replacing it)
        raise Invalid(f"config: cluster.etcd_ca: {ca}: {exc.strerror}") from None
    if certificate is not None:
        _load_client_certificate(context, *certificate)
    return context


def _load_client_certificate(context: ssl.SSLContext, cert: str, key: str) -> None:
    readable("etcd_cert", cert)
    read_private(key, f"config: cluster.etcd_key: {key}", ETCD_GRANT)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise Invalid(f"config: cluster.etcd_cert and etcd_key: {cert} and {key} are not a PEM certificate "
                      f"and its private key ({exc.reason or exc})") from None
    except OSError as exc:  # gone since it was checked (a renewal replacing it)
        raise Invalid(f"config: cluster.etcd_cert and etcd_key: {exc.filename or cert}: {exc.strerror}") from None


def readable(name: str, path: str) -> str:
    """`path` if it is a file this process can read; else Invalid naming the key `name`."""
    try:
        with open(path, "rb"):
            return path
    except OSError as exc:
        raise Invalid(f"config: cluster.{name}: {path}: {exc.strerror}") from None


async def tls_failure(url: str, exc: httpx.TransportError, context: ssl.SSLContext) -> MemberFailed | None:
    """What TLS says of transport failure `exc` at member `url`, in words that name TLS; None if nothing.
    Nothing was sent where the handshake failed, or where the member's alert refused this client's
    certificate (on `exc`, or on a fresh connection when an https stream broke without a TLS error); any
    other TLS error breaking a written request (a damaged record, say) may have left it taken effect."""
    found = ssl_error_in(exc)
    if isinstance(exc, httpx.ConnectError) and found is not None:  # refused only for a certificate: another
        # alert (the member's internal error, as while its own certificate files are renewed) may pass
        refused = isinstance(found, ssl.SSLCertVerificationError) or refuses_certificate(found)
        return MemberFailed(words(found), sent=False, tls_refused=refused)
    if not isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        return None
    if found is None and url.startswith("https://"):
        probed = await alert_of(url, context)
        found = probed if refuses_certificate(probed) else None  # nothing else there tells of this connection
    if found is None:
        return None
    if refuses_certificate(found):
        return MemberFailed(words(found), sent=False, tls_refused=True)
    return MemberFailed(f"connection lost: {words(found)}", sent=True)


def refuses_certificate(error: ssl.SSLError | None) -> bool:
    """Whether `error` is the member's alert refusing this client's certificate (never a failed verification
    of the member's own certificate, which this side decides)."""
    if error is None or isinstance(error, ssl.SSLCertVerificationError):
        return False
    reason = reason_of(error)
    return "alert" in reason and any(about in reason for about in CERTIFICATE_ALERTS)


def ssl_error_in(exc: BaseException | None) -> ssl.SSLError | None:
    """The TLS error among the causes of `exc` (httpx's errors wrap httpcore's, trio's, then ssl's);
    not an EOF, which is a connection lost, not refused."""
    while exc is not None:
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


async def alert_of(url: str, context: ssl.SSLContext) -> ssl.SSLError | None:
    """The TLS error a fresh connection to `url` meets within PROBE_S (the member's refusal of this
    client's certificate), or None where the member accepts it or cannot be reached."""
    parts = urllib.parse.urlsplit(url)
    with trio.move_on_after(PROBE_S):
        try:
            stream = await trio.open_ssl_over_tcp_stream(parts.hostname or "", parts.port or 443,
                                                         ssl_context=context, https_compatible=True)
            async with stream:
                await stream.do_handshake()
                await stream.receive_some()  # the member's alert; an accepting member waits for a request
        except (OSError, trio.BrokenResourceError) as failed:
            return ssl_error_in(failed)
    return None


def words(error: ssl.SSLError) -> str:
    """A TLS error as an operator reads it: which side refused, and OpenSSL's reason."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"TLS: the member's certificate failed verification: {error.verify_message} "
                f"(is cluster.etcd_ca the CA that signed it, for this host name?)")
    reason = reason_of(error)
    if refuses_certificate(error):
        return (f"TLS: the member refused the connection: {reason} (does cluster.etcd_cert hold a client "
                f"certificate signed by a CA the member trusts?)")
    return f"TLS: the member ended the connection: {reason}" if "alert" in reason else f"TLS: {reason}"


def reason_of(error: ssl.SSLError) -> str:
    """OpenSSL's reason of `error` in lower-case words ("sslv3 alert bad certificate")."""
    return (error.reason or str(error)).lower().replace("_", " ")
