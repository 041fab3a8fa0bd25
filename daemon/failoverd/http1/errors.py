"""The HTTP/1.1 client's exceptions (mapped to UpstreamErrors in `providers/http.py`).

The tree::

    HttpClientError
    ├── ConnectError           no connection: refused, unreachable, DNS, TLS handshake
    ├── ConnectTimeout         no connection within the connect timeout (also a TimeoutError)
    ├── ServerDisconnected     the connection closed before a response head arrived
    ├── ProtocolError          the server spoke something that is not HTTP/1.x
    └── PayloadError           the response body was cut short or cannot be decoded
"""

from __future__ import annotations


class HttpClientError(Exception):
    """Root of the HTTP/1.1 client's exceptions."""


class ConnectError(HttpClientError):
    """The connection could not be made."""


class ConnectTimeout(HttpClientError, TimeoutError):
    """The connection was not made within the connect timeout."""


class ServerDisconnected(HttpClientError):
    """The server closed the connection before sending a response head."""

    def __init__(self, message: str, *, got_bytes: bool = False) -> None:
        super().__init__(message)
        # a reused keep-alive connection that closed before any byte came back is safe to
        # retry once: the server closed it idle, without reading the request
        self.got_bytes = got_bytes


class ProtocolError(HttpClientError):
    """The response is not valid HTTP/1.x (or uses a framing this client does not speak)."""


class PayloadError(HttpClientError):
    """The response body is incomplete or its content coding is broken."""
