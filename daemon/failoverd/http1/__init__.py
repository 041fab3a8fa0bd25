"""failoverd's lean HTTP/1.1 client for upstream calls (see `client.py`)."""

from failoverd.http1.client import HttpClient, Proxy, Requester
from failoverd.http1.connection import Response
from failoverd.http1.errors import (
    ConnectError,
    ConnectTimeout,
    HttpClientError,
    PayloadError,
    ProtocolError,
    ServerDisconnected,
)
from failoverd.http1.parser import Headers

__all__ = ["ConnectError", "ConnectTimeout", "Headers", "HttpClient", "HttpClientError",
           "PayloadError", "ProtocolError", "Proxy", "Requester", "Response", "ServerDisconnected"]
