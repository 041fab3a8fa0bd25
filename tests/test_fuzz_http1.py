"""Property-based and differential fuzzing of the upstream response parser (http1/parser.py).

Valid responses (interim 1xx, bodiless statuses, HEAD answers, Content-Length, chunked with
extensions and trailers, read-until-close, gzip/deflate, header case and whitespace variants)
are fed split at random points; the head, the (decoded) body and the keep-alive decision must
equal h11's, the oracle (h11 does not decode: its body is compared with the encoded bytes).
Invalid ones (bad chunk sizes, conflicting or absurd Content-Length, oversize heads, truncated
bodies, junk) must end in the parser's own ProtocolError, PayloadError or ServerDisconnected:
never another exception, with the buffer bounded.

Examples: a few hundred, derandomized, in the normal suite; `FAILOVERD_FUZZ_EXAMPLES=N` runs N
per property from a fresh random seed (a long hunt).
"""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from failoverd.http1 import (
    HttpClient,
    HttpClientError,
    PayloadError,
    ProtocolError,
    Response,
    ServerDisconnected,
)
from failoverd.http1.parser import MAX_HEAD, ResponseParser
from tests.test_http1_client import RawServer
from tests.test_http1_client import raw_server as raw_server  # the fixture
from tests.test_http1_parser import Sink, parse

EXAMPLES = int(os.environ.get("FAILOVERD_FUZZ_EXAMPLES", "0"))
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def fuzz(examples: int) -> settings:
    """`examples` derandomized in the normal suite; FAILOVERD_FUZZ_EXAMPLES from a new seed."""
    return settings(max_examples=EXAMPLES or examples, derandomize=not EXAMPLES,
                    deadline=None, database=None, print_blob=True,
                    # in the suite a failure is reported as found (shrinking it could take
                    # longer than the test's timeout); a hunt shrinks it
                    phases=tuple(Phase) if EXAMPLES else NO_SHRINK,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


OURS = (ProtocolError, PayloadError, ServerDisconnected)

# ---------------------------------------------------------------------- generating responses

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# a header value as h11 takes it: visible ASCII, obs-text, inner spaces and tabs
_VALUE = st.text(st.sampled_from([chr(c) for c in range(0x21, 0x7f)] + ["\xe9", "\xff", " ",
                                                                         "\t"]),
                 max_size=30).map(lambda v: v.strip(" \t"))
_NAMES = st.sampled_from(["Server", "Date", "X-Request-Id", "Set-Cookie", "Cache-Control",
                          "Retry-After", "anthropic-ratelimit-requests-remaining", "Vary",
                          "Keep-Alive", "ETag"]) | st.text(_TCHAR, min_size=1, max_size=12)
_FRAMED = {"content-length", "transfer-encoding", "connection", "content-encoding"}


@st.composite
def name_case(draw: st.DrawFn, name: str) -> str:
    """`name` with each letter's case drawn."""
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(name, flips, strict=True))


@st.composite
def field_line(draw: st.DrawFn, name: str, value: str) -> bytes:
    """`name: value` with drawn name case and optional whitespace around the value."""
    before = draw(st.sampled_from(["", " ", "  ", "\t", " \t"]))
    after = draw(st.sampled_from(["", "", " ", "\t"]))
    return f"{draw(name_case(name))}:{before}{value}{after}\r\n".encode("latin-1")


@dataclass
class Generated:
    """A generated response: its bytes and what it must parse to."""

    wire: bytes
    head_method: bool  # the answer to a HEAD request
    status: int
    body: bytes  # decoded
    until_close: bool  # the body ends with the connection


def _chunked(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` in chunks of drawn sizes, with size-line variants, extensions and trailers."""
    out = bytearray()
    rest = data
    while True:
        size = draw(st.integers(1, max(1, len(rest)))) if rest else 0
        piece, rest = rest[:size], rest[size:]
        digits = f"{len(piece):x}"
        digits = draw(st.sampled_from([digits, digits.upper(), "0" + digits, "00" + digits]))
        ext = draw(st.sampled_from(["", "", ";name", ";name=value", ';q="a b;c"',
                                    ";a=1;b=2"]))
        out += f"{digits}{ext}\r\n".encode()
        if not piece:
            break
        out += piece + b"\r\n"
    for name, value in draw(st.lists(st.tuples(_NAMES, _VALUE), max_size=2)):
        if name.lower() not in _FRAMED:
            out += draw(field_line(name, value))
    return bytes(out + b"\r\n")


def _encode(draw: st.DrawFn, coding: str, data: bytes) -> bytes:
    if coding in ("gzip", "x-gzip"):
        if data and draw(st.booleans()):  # two gzip members, one after the other
            cut = draw(st.integers(0, len(data)))
            return gzip.compress(data[:cut], mtime=0) + gzip.compress(data[cut:], mtime=0)
        return gzip.compress(data, mtime=0)
    if coding == "deflate":  # RFC 9110 8.4.1.2: the zlib format
        return zlib.compress(data)
    return data


@st.composite
def responses(draw: st.DrawFn) -> Generated:
    version = draw(st.sampled_from(["1.1", "1.1", "1.1", "1.0"]))
    head_method = draw(st.integers(0, 9)) == 0
    status = draw(st.sampled_from([200, 200, 201, 204, 206, 304, 400, 401, 404, 413, 429, 500,
                                   502, 503, 529]) | st.integers(200, 599))
    reason = draw(st.sampled_from(["OK", "", "Not Found", "Too Many Requests", "caf\xe9",
                                   "a\tb"]))
    bodiless = head_method or status in (204, 304)
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if framing == "chunked" and version == "1.0":
        framing = "length"
    coding = draw(st.sampled_from(["", "", "identity", "gzip", "x-gzip", "deflate"]))
    plain = b"" if bodiless else draw(st.binary(max_size=600) | st.sampled_from(
        [b"", b'{"id":"x","choices":[]}', b"data: {}\n\n" * 20]))
    encoded = _encode(draw, coding, plain)

    fields: list[tuple[str, str]] = []
    if framing == "length":
        length = str(len(encoded))
        fields.append(("Content-Length", length))
        if draw(st.integers(0, 9)) == 0:  # a repeated, equal Content-Length is allowed
            fields.append(("Content-Length", draw(st.sampled_from([length,
                                                                    f"{length}, {length}"]))))
    elif framing == "chunked":
        fields.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "Chunked",
                                                                  "CHUNKED"]))))
    if coding:
        fields.append(("Content-Encoding", draw(name_case(coding))))
    connection = draw(st.sampled_from([None, None, "close", "keep-alive", "Keep-Alive",
                                       "CLOSE", "keep-alive, close", "Upgrade, close",
                                       "te, keep-alive"]))
    if connection is not None:
        fields.append(("Connection", connection))
    for name, value in draw(st.lists(st.tuples(_NAMES, _VALUE), max_size=6)):
        if name.lower() not in _FRAMED:
            fields.append((name, value))
    fields = draw(st.permutations(fields))

    wire = bytearray()
    if version == "1.1":  # interim answers first (HTTP/1.0 has none)
        for code in draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2)):
            wire += f"HTTP/1.1 {code} Interim\r\n".encode()
            if code == 103:
                wire += b"Link: </style.css>; rel=preload\r\n"
            wire += b"\r\n"
    wire += f"HTTP/{version} {status} {reason}".encode("latin-1") + b"\r\n"
    for name, value in fields:
        wire += draw(field_line(name, value))
    wire += b"\r\n"
    if not bodiless:
        wire += _chunked(draw, encoded) if framing == "chunked" else encoded
    return Generated(bytes(wire), head_method, status, plain,
                    until_close=framing == "close" and not bodiless)


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` split one byte at a time, whole, or at drawn points."""
    how = draw(st.sampled_from(["bytes", "whole", "random", "random"]))
    if how == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    if how == "whole":
        return [data]
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# ---------------------------------------------------------------------- the oracle


@dataclass
class Oracle:
    status: int
    reason: str
    version: str
    fields: dict[str, str]  # repeated fields joined with ", ", as the parser joins them
    body: bytes  # as it came (not decoded)
    keep_alive: bool


def h11_parse(wire: bytes, head_method: bool) -> Oracle:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="HEAD" if head_method else "GET", target="/",
                          headers=[("Host", "upstream")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(wire)
    final: h11.Response | None = None
    body = bytearray()
    closed = False  # the body was read until the connection closed
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA and not closed:
            conn.receive_data(b"")  # the end of the connection
            closed = True
        elif isinstance(event, h11.Response):
            final = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        elif not isinstance(event, h11.InformationalResponse):
            raise AssertionError(f"h11 did not finish the response: {event!r}")
    assert final is not None
    fields: dict[str, str] = {}
    for name, value in final.headers:
        key, text = name.decode(), value.decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    # DONE: the connection carries another request; MUST_CLOSE it does not
    return Oracle(final.status_code, final.reason.decode("latin-1"),
                  final.http_version.decode(), fields, bytes(body),
                  conn.their_state is h11.DONE and not closed)


def _h11_header(name: str, value: str) -> str:
    """What h11 makes of a field value the parser keeps as sent (Content-Length: h11
    normalises "5, 5" to "5"; Transfer-Encoding: it lower-cases)."""
    if name == "content-length":
        return value.split(",")[0].strip()
    return value.lower() if name == "transfer-encoding" else value


def keeps_alive(response: Generated, oracle: Oracle) -> bool:
    """h11's keep-alive decision, but for HTTP/1.0 keep-alive, which h11 does not speak and
    the parser honours."""
    tokens = {t.strip() for t in oracle.fields.get("connection", "").lower().split(",")}
    if oracle.version == "1.0" and "keep-alive" in tokens and "close" not in tokens \
            and not response.until_close:
        return True
    return oracle.keep_alive


# ---------------------------------------------------------------------- valid responses


@fuzz(120)
@given(st.data())
def test_valid_responses_parse_as_h11_parses_them(data: st.DataObject) -> None:
    response = data.draw(responses())
    oracle = h11_parse(response.wire, response.head_method)
    pieces = data.draw(split(response.wire))
    sink = Sink()
    parser = ResponseParser(sink, expect_body=not response.head_method)
    for piece in pieces:
        parser.feed(piece)
    if response.until_close:
        assert not parser.done
        parser.feed_eof()
    assert parser.done
    assert sink.completions == 1
    head = sink.head
    assert (head.status, head.reason, head.version) == (oracle.status, oracle.reason,
                                                        oracle.version)
    ours = {name: _h11_header(name, value) for name, value in head.headers.items()}
    assert ours == oracle.fields
    assert bytes(sink.body) == response.body
    assert parser.keep_alive == keeps_alive(response, oracle)
    # h11's body is the encoded one: the framing agrees byte for byte
    encoding = oracle.fields.get("content-encoding", "").lower()
    if encoding in ("", "identity"):
        assert oracle.body == response.body
    elif oracle.body:
        decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)
        decoded, rest = decoder.decompress(oracle.body), decoder.unused_data
        while rest:
            decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)
            decoded += decoder.decompress(rest)
            rest = decoder.unused_data
        assert decoded == response.body


@fuzz(80)
@given(st.data())
def test_valid_responses_cut_short_raise_the_parsers_own_errors(data: st.DataObject) -> None:
    """Every valid response that ends early (the connection closed at a drawn byte) ends in
    ServerDisconnected before its head, PayloadError after it, or is complete."""
    response = data.draw(responses())
    cut = data.draw(st.integers(0, len(response.wire) - 1))
    sink = Sink()
    parser = ResponseParser(sink, expect_body=not response.head_method)
    parser.feed(response.wire[:cut])
    try:
        parser.feed_eof()
    except ServerDisconnected:
        assert not sink.heads
    except PayloadError:
        assert sink.heads and not sink.completions
    else:
        assert parser.done and sink.completions == 1


# ---------------------------------------------------------------------- invalid responses

_STATUS = b"HTTP/1.1 200 OK\r\n"


@st.composite
def invalid_responses(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["chunk_size", "content_length", "head", "junk", "mutated",
                                 "chunk_end", "gzip", "status"]))
    if kind == "chunk_size":
        size = draw(st.sampled_from(["", "-1", "0x10", "g", "1 2", "+5", " ", "\xff", "1_0",
                                     "\u0661", "ffffffffffffffffffffffffffff;"]) | st.text(
            max_size=8).filter(lambda s: "\r\n" not in s))
        return _STATUS + b"Transfer-Encoding: chunked\r\n\r\n" \
            + size.encode("utf-8") + b"\r\nabc\r\n0\r\n\r\n"
    if kind == "content_length":
        value = draw(st.sampled_from(["5, 6", "-1", "+5", "1e3", "0x10", "5 5", "\u0665",
                                      "9" * 5000, "1" * 4301, ""]) | st.text(max_size=8))
        return _STATUS + f"Content-Length: {value}\r\n\r\n".encode() + b"hello"
    if kind == "head":
        return draw(st.sampled_from([
            b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * (MAX_HEAD // 6 + 10) + b"\r\n",
            b"HTTP/2 200\r\n\r\n", b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n", b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n no-name\r\n\r\n", b"HTTP/1.1 200 OK\r\n: empty\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : space\r\n\r\n", b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",
            b"HTTP/1.\xff 200 OK\r\n\r\n", b"HTTP/1.1 \xd9\xa1\xd9\xa2\xd9\xa3\r\n\r\n"]))
    if kind == "junk":
        return draw(st.binary(min_size=1, max_size=300))
    if kind == "chunk_end":
        return _STATUS + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n"
    if kind == "gzip":
        payload = gzip.compress(b"x" * 200, mtime=0)
        broken = draw(st.sampled_from([payload[:-4], payload[:10], b"\x1f\x8b" + b"\0" * 20,
                                       payload[:-1] + bytes([payload[-1] ^ 1]),
                                       zlib.compress(b"abc")[2:-4]]))
        return _STATUS + b"Content-Encoding: gzip\r\nContent-Length: " \
            + str(len(broken)).encode() + b"\r\n\r\n" + broken
    if kind == "status":
        return draw(st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b""))) \
            + b"\r\nContent-Length: 0\r\n\r\n"
    # a valid response with a few bytes changed
    wire = bytearray(draw(responses()).wire)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(wire) - 1))
        wire[at] = draw(st.integers(0, 255))
    return bytes(wire)


@fuzz(120)
@given(st.data())
def test_invalid_responses_raise_only_the_parsers_own_errors(data: st.DataObject) -> None:
    wire = data.draw(invalid_responses())
    pieces = data.draw(split(wire))
    expect_body = data.draw(st.booleans())
    sink = Sink()
    parser = ResponseParser(sink, expect_body=expect_body)
    try:
        for piece in pieces:
            parser.feed(piece)
            # bounded memory: a head is refused past MAX_HEAD, a chunk line past 1 KiB
            assert len(parser._buf) <= MAX_HEAD + len(piece) + 4
        parser.feed_eof()
    except OURS:
        return
    # accepted (some mutations keep a response valid): it was complete
    assert parser.done and sink.completions == 1


# ---------------------------------------------------------------------- what the hunt found


@pytest.mark.parametrize("value", [b"9" * 5000, b"1" * 4301, b"5, " + b"5" * 4400])
def test_a_content_length_of_thousands_of_digits_is_a_protocol_error(value: bytes) -> None:
    """Python refuses int() of a decimal string over 4300 digits with a ValueError, which
    escaped the parser (found by fuzzing)."""
    with pytest.raises(ProtocolError, match="Content-Length"):
        parse(_STATUS + b"Content-Length: " + value + b"\r\n\r\nhello")


@pytest.mark.parametrize("status", [b"000", b"099", b"042"])
def test_a_status_below_100_is_a_protocol_error(status: bytes) -> None:
    """A status under 100 is no HTTP status (RFC 9110 15); the parser took it as an interim
    answer and waited for another head (found by fuzzing against h11, which refuses it)."""
    with pytest.raises(ProtocolError, match="status"):
        parse(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("connection", [b"keep-alive, close", b"close, keep-alive",
                                        b"Keep-Alive , CLOSE"])
def test_close_wins_over_keep_alive_in_an_http10_answer(connection: bytes) -> None:
    """HTTP/1.0 with `Connection: keep-alive, close` kept the connection: the parser looked
    for "keep-alive" alone (found by fuzzing against h11)."""
    parser, _ = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: " + connection
                      + b"\r\n\r\n")
    assert parser.done and not parser.keep_alive


@pytest.mark.parametrize(("connection", "keep_alive"), [
    (b"keep-alive", True), (b"te, keep-alive", True), (b"closed", True), (b"close", False)])
def test_connection_is_read_as_tokens_in_an_http11_answer(connection: bytes,
                                                          keep_alive: bool) -> None:
    parser, _ = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: " + connection
                      + b"\r\n\r\n")
    assert parser.done and parser.keep_alive is keep_alive


# ---------------------------------------------------------------------- through the client


async def _read(resp: Response, how: str, size: int) -> bytes:
    if how == "read":
        return await resp.read()
    out = bytearray()
    while True:
        piece = await (resp.readline() if how == "lines" else resp.read_upto(size))
        if not piece:
            break
        out += piece
    resp.release()
    return bytes(out)


async def test_the_client_reads_what_h11_reads_and_reuses_what_h11_keeps(
        raw_server: Callable[..., Awaitable[RawServer]]) -> None:
    """Generated responses (valid: the body and reuse as h11 has them; invalid: only the
    client's own errors) over real connections through HttpClient, each followed by a plain
    request that must be answered: on the same connection exactly when it was kept alive."""
    loop = asyncio.get_running_loop()
    script: list[tuple[list[bytes], bool]] = []  # the answers to come: pieces, then close?
    again = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain"]

    async def answer(srv: RawServer, n: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        # each piece written apart (the loop turning between them, so that they arrive
        # apart); after an answer that ends with the connection, it closes
        while await srv.read_request(reader) is not None:
            pieces, closes = script.pop(0)
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                for _ in range(2):
                    await asyncio.sleep(0)
            if closes:
                return

    srv = await raw_server(answer)
    async with HttpClient() as client:
        async def exchange(response: Generated, valid: bool, pieces: list[bytes], how: str,
                           size: int) -> None:
            script[:] = [(pieces, response.until_close or not valid), (again, False),
                         (again, False)]
            method = "HEAD" if response.head_method else "GET"
            try:
                resp = await client.request(method, srv.url, headers={}, connect_timeout=5)
                body = await _read(resp, how, size)
            except HttpClientError:
                assert not valid
                script[:] = [(again, False), (again, False)]
            else:
                if valid:
                    assert resp.status == response.status
                    assert body == response.body
            connects = client.connects
            try:
                after = await client.request("GET", srv.url, headers={}, connect_timeout=5)
                assert await after.read() == b"again"
            except HttpClientError as exc:
                # junk that came after what parsed as a whole answer, on the connection
                # pooled meanwhile, is read as the next answer: that request fails (as with
                # h11 or curl), and the connection with it
                assert not valid and client.connects == connects, exc
                after = await client.request("GET", srv.url, headers={}, connect_timeout=5)
                assert await after.read() == b"again"
            if valid:
                # the second request went over the first one's connection exactly when
                # h11 keeps that connection alive
                kept = keeps_alive(response, h11_parse(response.wire, response.head_method))
                assert (client.connects == connects) == kept

        @fuzz(40)
        @given(st.data())
        def prop(data: st.DataObject) -> None:
            valid = data.draw(st.integers(0, 3)) > 0
            response = data.draw(responses())
            wire = response.wire if valid else data.draw(invalid_responses())
            pieces = data.draw(split(wire))
            how = data.draw(st.sampled_from(["read", "lines", "upto"]))
            size = data.draw(st.integers(1, 64))
            asyncio.run_coroutine_threadsafe(
                asyncio.wait_for(exchange(response, valid, pieces, how, size), 20),
                loop).result()

        await asyncio.to_thread(prop)
