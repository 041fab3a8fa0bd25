"""The fast path: proxied chat requests served without aiohttp's server.

Every client connection starts here. A request this module recognises — `POST
/v1/chat/completions`, `POST /v1/messages`, `POST /v1/responses`, `POST /v1/completions` or
`POST /v1/embeddings` in HTTP/1.1, a
well-formed head of at most 8190 bytes without a repeated field, a Content-Length body
within `max_body_bytes` that has fully arrived, no Transfer-Encoding, Expect, Upgrade or
Connection other than keep-alive — runs the handler aiohttp would run (behind the same
access guard and drain tracking, api/drain.py); its answer is written here in one write, or,
streamed, as a head and chunks (`FastStream`, api/fastrequest.py). Anything else hands the
connection, with every byte not yet consumed, to aiohttp's own protocol for the rest of its
life: aiohttp alone decides every other case (a malformed request's 400, chunked bodies,
100-continue, the control API, event streams).

Why: aiohttp's server (its request and response objects, header parsing and writing, the
router) was about 35% of the CPU of a proxied request; this path does the same work for
the common request in a few dozen operations (see README, Benchmark).

Semantics kept from aiohttp's server as the supervisor configures it: a client that goes
away cancels its request (handler_cancellation), a connection idle for `idle_timeout` is
closed, requests pipelined on one connection are answered in order, a stream write waits
while the client is not reading, a draining daemon closes idle connections at once and busy
ones after their answer (`Connection: close`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from failoverd import requestid
from failoverd.api import accesslog
from failoverd.api.access import refusal_of
from failoverd.api.body import stalled_body
from failoverd.api.completions import completions
from failoverd.api.drain import RequestTracker, StreamOpener, shutting_down
from failoverd.api.embeddings import embeddings
from failoverd.api.fastrequest import FastRequest, FastStream
from failoverd.api.fronts import ANTHROPIC, OPENAI
from failoverd.api.proxy import chat_completions, messages, responses
from failoverd.api.replies import openai_error
from failoverd.api.service import SERVICE
from failoverd.listen import peer_uid
from failoverd.requestid import REQUEST_ID

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's limit on a request line and on a header field: a longer head goes to aiohttp,
# which answers it (400 / 431)
HEAD_LIMIT = 8190
# bytes a client may have sent ahead (pipelined) while its request is served or while it
# does not read its answers, before the connection stops being read
_AHEAD = 64 * 1024
# how every request served here begins
_REQUEST_START = b"POST /v1/"
# the share of the process's file descriptors client connections may hold: the rest stay
# for upstream connections, the state file and hooks, which a local client holding
# thousands of idle connections would otherwise starve (every upstream connect failing with
# EMFILE, counted against the model's breaker)
_CLIENT_FD_SHARE = 0.5
# aiohttp's limit on the number of header fields (more: its 400)
MAX_FIELDS = 128
# what aiohttp refuses to send in a header: a control character other than tab
_UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# what no head served here holds: a control character other than tab, CR and LF
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# header fields as RFC 9110 has them: a token, a colon, a value of no control character but
# tab, each line ending in CRLF (no obs-fold, no whitespace before the colon)
_NAME = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELDS = re.compile(rf"(?:{_NAME}:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_FIELD = re.compile(rf"({_NAME}):[ \t]*([^\r\n]*)\r\n")
# fields whose presence leaves the request to aiohttp
_HANDS_OFF = frozenset({"transfer-encoding", "expect", "upgrade"})


class FastPath:
    """The listeners' protocol factory: one `FastConnection` per client connection.

    `aiohttp_server` is the runner's server (after setup): called, it makes the aiohttp
    protocol a connection is handed to.
    """

    def __init__(self, app: web.Application, tracker: RequestTracker,
                 aiohttp_server: Callable[[], asyncio.Protocol]) -> None:
        self.app = app
        self.service = app[SERVICE]
        service = self.service
        self.routes: dict[bytes, Handler] = {
            b"/v1/chat/completions": tracker.wrap(chat_completions, service),
            b"/v1/messages": tracker.wrap(messages, service),
            b"/v1/responses": tracker.wrap(responses, service),
            b"/v1/embeddings": tracker.wrap(embeddings, service),
            b"/v1/completions": tracker.wrap(completions, service),
        }
        # Claude Code (the Anthropic SDK's beta client) always asks with ?beta=true
        self.routes[b"/v1/messages?beta=true"] = self.routes[b"/v1/messages"]
        self.aiohttp_server = aiohttp_server
        self.idle_timeout = service.client_idle_timeout
        self.connections: set[FastConnection] = set()
        self.closing = False
        self.served = 0  # answers written by this path
        self.handed_off = 0  # connections given to aiohttp
        self.max_connections = max_client_connections()
        self.refused = 0  # connections closed at once: max_connections were open
        self._full = False
        self._date = ""
        self._date_second = 0
        service.client_connections = self.connection_counts

    def __call__(self) -> FastConnection:
        return FastConnection(self)

    def connection_counts(self) -> tuple[int, int]:
        """(client connections open on both paths, connections refused at the cap)."""
        server_connections = getattr(self.aiohttp_server, "connections", ())
        return len(self.connections) + len(server_connections), self.refused

    def admit(self) -> bool:
        """Whether a new connection may stay: fewer than `max_connections` are open on both
        paths (aiohttp's list is copied: counted per connection, never per request)."""
        if self.connection_counts()[0] < self.max_connections:
            self._full = False
            return True
        self.refused += 1
        if not self._full:  # once per episode, not per connection
            self._full = True
            logger.warning("%d client connections are open (half the file descriptor limit): "
                           "new ones are closed at once", self.max_connections)
        return False

    def date(self) -> str:
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self._date = formatdate(second, usegmt=True)
        return self._date

    def pre_shutdown(self) -> None:
        """The drain begins: idle connections close now (one with a request still arriving
        gets the 503 a cut request gets), busy ones after their answer."""
        self.closing = True
        for conn in list(self.connections):
            if conn.task is None:
                conn.refuse_unfinished()

    def close(self) -> None:
        """The end: whatever connection is left is closed."""
        self.closing = True
        for conn in list(self.connections):
            conn.close()


def max_client_connections() -> int:
    """How many client connections may be open at once: half the file descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, int(soft * _CLIENT_FD_SHARE))


class FastConnection(asyncio.Protocol, StreamOpener):
    """One client connection while it stays on the fast path."""

    __slots__ = ("front", "transport", "chunks", "pos", "size", "need", "task", "closed",
                 "idle_since", "idle_timer", "reading_paused", "writing_paused", "stream",
                 "close_after", "drained", "_loop")

    def __init__(self, front: FastPath) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        # received and not yet consumed: chunks[0][pos:], then the other chunks
        self.chunks: list[bytes] = []
        self.pos = 0
        self.size = 0  # bytes not yet consumed
        self.need = 0  # of them, what the request being received needs, once its head is known
        self.task: asyncio.Task[None] | None = None  # the request being served
        self.closed = False
        self.idle_since = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.stream: FastStream | None = None  # the current request's, once prepared
        self.close_after = False  # the current answer said Connection: close
        self.drained: asyncio.Future[None] | None = None  # a stream write waiting
        self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.front.admit():
            self.closed = True
            self.transport.abort()
            return
        self.front.connections.add(self)
        self.idle_since = self._loop.time()
        self.idle_timer = self._loop.call_at(self.idle_since + self.front.idle_timeout,
                                             self._idle_check)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        self.idle_since = self._loop.time()
        if self.task is None and not self.writing_paused:
            if self.size >= self.need:  # a body arriving is looked at again once all there
                self._next()
        elif not self.reading_paused and self.size > _AHEAD:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.front.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.task is not None:
            self.task.cancel()  # the client went away: its request stops (aiohttp's
            # handler_cancellation, as the supervisor sets it)
        self._wake_writer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()
        if self.task is None:
            self._next()

    def _wake_writer(self) -> None:
        if self.drained is not None:
            if not self.drained.done():
                self.drained.set_result(None)
            self.drained = None

    # ------------------------------------------------------------------ requests

    def close(self) -> None:
        """Closes the connection; what it holds unread is dropped, never started."""
        self.chunks, self.pos, self.size, self.need = [], 0, 0, 0
        if self.transport is not None and not self.closed:
            self.transport.close()

    def refuse_unfinished(self) -> None:
        """At the drain: closes an idle connection, answering first the request still
        arriving on it, if any (not blank lines between requests)."""
        if self.size and not self._closing():
            if self._unconsumed().strip(b"\r\n"):
                self._write(self._unserved(shutting_down(self._anthropic_pending()), 0.0))
        self.close()

    def _unserved(self, response: web.Response, seconds: float) -> web.Response:
        """`response`, to a request answered before it reached a handler (a body that
        stalled, or still arriving at the drain), with the request's id; and the access
        log's line for it: nothing else writes one."""
        data = self._unconsumed()
        line = data.split(b"\r\n", 1)[0].split(b" ")
        path = line[1].decode("latin-1") if len(line) > 1 else "-"
        if path.partition("?")[0] not in accesslog.PATHS:
            return response  # not a proxied request's (a blank line, another path)
        rid = requestid.from_head(data)
        requestid.stamp(response.headers, rid, self._anthropic_pending())
        if self.front.service.runtime.config.daemon.access_log and accesslog.logs(path):
            accesslog.write("POST", path, response.status, None, seconds,
                            peer_uid(self.transport), rid)
        return response

    def _anthropic_pending(self) -> bool:
        """Whether the request not yet consumed is an Anthropic one (its answer's shape)."""
        return self._unconsumed().startswith(b"POST /v1/messages")

    def _closing(self) -> bool:
        transport = self.transport
        return self.closed or transport is None or transport.is_closing()

    def _unconsumed(self) -> bytes:
        chunks = self.chunks
        first = chunks[0][self.pos:] if self.pos else chunks[0]
        return first if len(chunks) == 1 else b"".join([first, *chunks[1:]])

    def _max_body(self) -> int:
        return self.front.service.runtime.config.daemon.max_body_bytes

    def _next(self) -> None:
        """Starts the next buffered request, hands the connection off, or waits for bytes."""
        # a closing connection starts nothing more (uvloop may resume writing on one)
        if self.writing_paused or not self.size or self._closing():
            return
        transport = self.transport
        assert transport is not None
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        if len(self.chunks) == 1:
            data, pos = self.chunks[0], self.pos
        else:
            data, pos = self._unconsumed(), 0
            self.chunks, self.pos = [data], 0
        end = data.find(b"\r\n\r\n", pos, pos + HEAD_LIMIT + 4)
        if end < 0:
            # not all there yet: waited for only while it can still be a request served
            # here (aiohttp answers anything else at once)
            if not self._may_be_served(data[pos:pos + HEAD_LIMIT + 1]):
                self._hand_off()
            return
        request = self._parse(data, pos, end)
        if request is None:
            self._hand_off()
            return
        route, path, headers, length = request
        if length > self._max_body():
            self._hand_off()  # aiohttp's path answers the 413 and skips the body
            return
        stop = end + 4 + length
        if len(data) < stop:
            # the body is still arriving: it is held only for a client with access (one
            # without gets its refusal from aiohttp, which reads no body)
            if refusal_of(transport, headers, self.front.service, path) is not None:
                self._hand_off()
            else:
                self.need = stop - pos  # looked at again once it is all there
            return
        self.need = 0
        body = data[end + 4:stop]
        parsed: dict[str, Any] | None = None
        try:
            loaded = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the handler names the problem
        else:
            if isinstance(loaded, dict):
                parsed = loaded
        if stop == len(data):
            self.chunks, self.pos, self.size = [], 0, 0
        else:  # pipelined: the rest stays where it is, no copy
            self.pos, self.size = stop, len(data) - stop
        incoming = FastRequest(self.front.app, path, headers, self, body, parsed)
        self.task = self._loop.create_task(self._serve(route, incoming))

    def _may_be_served(self, head: bytes) -> bool:
        """Whether `head`, the start of a head not yet complete, can still become a request
        served here: what can not (a bare CR or LF, a control character, TLS, another
        method, a request line or a field line `_parse` refuses) goes to aiohttp at once,
        which answers it (its 400), instead of waiting for an end that may never come."""
        if (len(head) > HEAD_LIMIT or not _REQUEST_START.startswith(head[:9])
                or head.count(b"\n") != head.count(b"\r\n")
                or head.count(b"\r") != head.count(b"\r\n") + head.endswith(b"\r")
                or _CONTROL.search(head) is not None):
            return False
        line_end = head.find(b"\r\n")
        if line_end < 0:
            return True
        method, _, rest = head[:line_end].partition(b" ")
        target, _, version = rest.partition(b" ")
        if method != b"POST" or version != b"HTTP/1.1" or target not in self.front.routes:
            return False
        lines = head[line_end + 2:head.rfind(b"\r\n") + 2]  # the complete field lines
        return _FIELDS.fullmatch(lines.decode("utf-8", "surrogateescape")) is not None

    def _parse(self, data: bytes, pos: int, end: int
               ) -> tuple[Handler, str, CIMultiDict[str], int] | None:
        """(handler, path, headers, content length) of the request whose head is
        data[pos:end] if this path serves it, else None: the connection goes to aiohttp."""
        line, _, fields = data[pos:end].partition(b"\r\n")
        method, _, rest = line.partition(b" ")
        target, _, version = rest.partition(b" ")
        if method != b"POST" or version != b"HTTP/1.1":
            return None
        route = self.front.routes.get(target)  # exactly: no query string, no odd spacing
        if route is None:
            return None
        # one decoding for all fields: names are ASCII, values as aiohttp decodes them
        text = fields.decode("utf-8", "surrogateescape") + "\r\n" if fields else ""
        if _FIELDS.fullmatch(text) is None:
            return None
        pairs = [(name, value.rstrip(" \t")) for name, value in _FIELD.findall(text)]
        names = {name.lower() for name, _ in pairs}
        if (len(names) != len(pairs) or not _HANDS_OFF.isdisjoint(names)
                or "host" not in names or len(pairs) > MAX_FIELDS):
            return None  # a repeated field (which one wins?), one aiohttp must handle, or
            # what aiohttp refuses (HTTP/1.1 without Host, too many fields)
        headers = CIMultiDict(pairs)
        length = headers.get("content-length")
        if length is None or not (length.isascii() and length.isdigit()) or len(length) > 18:
            return None
        connection = headers.get("connection")
        if connection is not None and connection.lower() != "keep-alive":
            return None
        return route, target.partition(b"?")[0].decode("ascii"), headers, int(length)

    async def _serve(self, route: Handler, request: FastRequest) -> None:
        try:
            try:
                response = await route(cast(web.Request, request))
            except Exception:  # not a cancellation (the client went away): that ends it
                logger.exception("error serving %s", request.path)
                self.front.service.metrics.failed("", "internal_error")
                if self.stream is not None:  # the head is out: no 500 can follow
                    self.close()
                    return
                front = ANTHROPIC if request.path == "/v1/messages" else OPENAI
                response = front.error(500, "internal_error",
                                       "internal error in failoverd; see its log",
                                       "internal_error")
                rid = request.get(REQUEST_ID)
                if rid is not None:
                    requestid.stamp(response.headers, rid, front is ANTHROPIC)
            if self.closed:
                return
            if self.stream is not None:
                self.stream.end_now()  # when the handler returned without ending it
            else:
                self._write(response)
            if self.close_after:
                self.close()
        finally:
            self.task = None
            self.stream = None
        if not self.closed:
            self._became_idle()

    # ------------------------------------------------------------------ answers

    def _write(self, response: web.StreamResponse) -> None:
        body = b""
        head = None
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            body = response.body
            head = self._head(response, len(body))
        else:  # never from these handlers: a defect
            logger.error("the fast path cannot write a %s", type(response).__name__)
        if head is None:
            fallback = openai_error(500, "internal error in failoverd; see its log",
                                    "internal_error", "internal_error")
            body = cast(bytes, fallback.body)
            head = self._head(fallback, len(body))
            assert head is not None
        assert self.transport is not None
        self.transport.write(head + body)
        self.front.served += 1

    def _head(self, response: web.StreamResponse, length: int | None) -> bytes | None:
        """The answer's head, with Content-Length `length` or else chunked; None (logged)
        when a header cannot be sent. Sets `close_after`."""
        closing = self.front.closing
        lines = [f"HTTP/1.1 {response.status} {response.reason}\r\n"]
        for name, value in response.headers.items():
            if _UNSENDABLE.search(value) is not None or _UNSENDABLE.search(name) is not None:
                # as aiohttp, which refuses to send it
                logger.error("the answer's header %s holds a control character", name)
                return None
            if name.lower() == "connection" and value.lower() == "close":
                closing = True
            lines.append(f"{name}: {value}\r\n")
        if closing and "Connection" not in response.headers:
            lines.append("Connection: close\r\n")
        lines.append(f"Content-Length: {length}\r\n" if length is not None
                     else "Transfer-Encoding: chunked\r\n")
        lines.append(f"Date: {self.front.date()}\r\nServer: {SERVER_SOFTWARE}\r\n\r\n")
        self.close_after = closing
        return "".join(lines).encode("utf-8")

    def open_stream(self, headers: dict[str, str]) -> web.StreamResponse:
        return FastStream(self, headers)

    def start_stream(self, stream: FastStream) -> None:
        head = self._head(stream, None)
        if head is None:
            raise ValueError("a header of the streamed answer holds a control character")
        self.stream = stream
        assert self.transport is not None
        self.transport.write(head)

    def write_chunk_now(self, data: bytes) -> bool:
        """`write_chunk` for a client that keeps up: writes and says True, or writes nothing
        and says False when `write_chunk` would wait or fail (it is then the one to call)."""
        transport = self.transport
        if self.writing_paused or self.closed or transport is None or transport.is_closing():
            return False
        if data:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True

    async def write_chunk(self, data: bytes) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        if data:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        if self.writing_paused:  # the client is not reading: wait until it does
            if self.drained is None:
                self.drained = self._loop.create_future()
            # shielded: a cancelled write (the drain's cut) must not cancel the future the
            # next write (the cut's error event) waits on
            await asyncio.shield(self.drained)

    def end_stream(self) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(b"0\r\n\r\n")
        self.front.served += 1

    def _became_idle(self) -> None:
        self.close_after = False
        self.idle_since = self._loop.time()
        if self.front.closing:
            self.close()
        elif self.size:
            self._next()

    def _idle_check(self) -> None:
        """The idle timer: closes the connection once it has been idle for idle_timeout.
        One timer per idle period, not per request: it re-arms for what is left."""
        self.idle_timer = None
        if self.closed:
            return
        now = self._loop.time()
        due = self.idle_since + self.front.idle_timeout
        if self.task is None and now >= due:
            if self.need:  # a body stalled: answered as aiohttp's path answers it
                stalled = stalled_body(self.front.idle_timeout)
                front = ANTHROPIC if self._anthropic_pending() else OPENAI
                self._write(self._unserved(front.error(
                    stalled.status, "invalid_request_error", stalled.message, stalled.code,
                    headers={"Connection": "close"}), self.front.idle_timeout))
            self.close()
            return
        # busy: looked at again a whole idle_timeout later (a request is never cut by it)
        self.idle_timer = self._loop.call_at(
            due if self.task is None else now + self.front.idle_timeout, self._idle_check)

    def _hand_off(self) -> None:
        """From now on aiohttp serves this connection, starting with the unconsumed bytes."""
        transport = self.transport
        assert transport is not None
        data = self._unconsumed() if self.size else b""
        self.chunks, self.pos, self.size = [], 0, 0
        self.front.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        protocol = self.front.aiohttp_server()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        self.front.handed_off += 1
        if data:
            protocol.data_received(data)
