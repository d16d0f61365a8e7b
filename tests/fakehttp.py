"""The few lines of HTTP/1.1 a fake engine in a test needs: read one request, send server-sent events.

Fake engines (test_openai_driver.py, test_triton_driver.py) serve these with
`trio.serve_tcp` on 127.0.0.1 and answer with `connection: close`, so one request per
connection and no keep-alive to handle; a connection closed before its request (a client's
spare, spares.py) has none. Not an HTTP server: nothing here checks much.
"""
import json

import attrs


@attrs.frozen
class Request:
    """One request as a fake engine sees it."""

    method: str
    path: str
    body: dict | None  # None for a request without one (a GET)
    headers: dict[str, str] = attrs.field(factory=dict)  # names and values lowercased


async def read_request(stream) -> Request | None:
    """Read one request, with its JSON body if it has one, from a trio stream; None if it closes first."""
    data = b""
    while b"\r\n\r\n" not in data:
        if not (more := await stream.receive_some()):
            return None
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b":", 1) for line in header_lines)
    method, path, _ = request_line.decode().split(" ", 2)
    if b"content-length" not in headers:
        return Request(method, path, None, {k.decode(): v.decode().strip() for k, v in headers.items()})
    length = int(headers[b"content-length"])
    while len(body) < length:
        body += await stream.receive_some()
    return Request(method, path, json.loads(body))


async def send_event(stream, event: dict) -> None:
    """One server-sent event whose data is `event` as JSON."""
    await stream.send_all(f"data: {json.dumps(event)}\n\n".encode())
