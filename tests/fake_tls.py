"""A fake https member for the etcd client's tests: it takes each request and then breaks in a chosen way.

`serve(nursery, pki, how)` listens on a free 127.0.0.1 port with the test PKI's server
certificate (tests/etcd_pki.py) and returns its URL and the list it appends each
request's first line to ("POST /v3/kv/txn HTTP/1.1"). `how` is what each connection
does once a request is in: "garbage" sends a damaged TLS record in place of the answer
and closes, "drop" closes at once, "hang" never answers; or, before any request,
"internal-error" ends every handshake with that alert (as a server whose own certificate
cannot be loaded for a moment does). The test's nursery stops it.
"""
import functools
import ssl

import trio

from etcd_pki import Pki

DAMAGED_RECORD = b"\x17\x03\x03\x00\x20" + bytes(range(32))  # application data no key decrypts
INTERNAL_ERROR = b"\x15\x03\x03\x00\x02\x02\x50"  # an alert record: fatal (2), internal_error (80)


async def alert(tcp: trio.SocketStream) -> None:
    """Answer a client's hello with a fatal internal-error alert and close (trio's SSLStream would not send
    the alert its failed handshake makes)."""
    try:
        await tcp.receive_some()
        await tcp.send_all(INTERNAL_ERROR)
    except trio.BrokenResourceError:
        pass
    finally:
        await tcp.aclose()


async def serve(nursery: trio.Nursery, pki: Pki, how: str) -> tuple[str, list[bytes]]:
    """The URL of a fake member that breaks every connection as `how` says, and its requests' first lines."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki("server.pem"), pki("server.key"))
    requests: list[bytes] = []

    async def handler(tcp: trio.SocketStream) -> None:
        if how == "internal-error":
            return await alert(tcp)
        stream = trio.SSLStream(tcp, context, server_side=True)
        try:
            await stream.do_handshake()
            requests.append((await stream.receive_some()).split(b"\r\n")[0])
            if how == "hang":
                await trio.sleep_forever()
            if how == "garbage":
                await tcp.send_all(DAMAGED_RECORD)
                await tcp.receive_some()  # until the client, which cannot read it, closes
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await tcp.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"https://127.0.0.1:{listeners[0].socket.getsockname()[1]}", requests
