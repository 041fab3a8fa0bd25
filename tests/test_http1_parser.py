"""The sans-I/O HTTP/1.1 response parser (http1/parser.py): bytes in, a recording sink out.

Every framing is also fed split at every byte position and one byte at a time: the sink must
see the same head, the same body bytes and exactly one completion however the bytes arrive.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field

import pytest

from failoverd.http1 import Headers, PayloadError, ProtocolError, ServerDisconnected
from failoverd.http1.parser import MAX_HEAD, Head, ResponseParser, parse_head


@dataclass
class Sink:
    """Records what the parser delivers, in order."""

    events: list[str] = field(default_factory=list)
    heads: list[Head] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    completions: int = 0

    def on_head(self, head: Head) -> None:
        assert not self.heads, "a second head"
        assert self.completions == 0
        self.events.append("head")
        self.heads.append(head)

    def on_body(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        assert data, "an empty body piece"
        assert self.heads and self.completions == 0, "body outside head..complete"
        self.events.append("body")
        self.body += data

    def on_complete(self) -> None:
        assert self.heads, "completion without a head"
        self.events.append("complete")
        self.completions += 1

    @property
    def head(self) -> Head:
        assert len(self.heads) == 1
        return self.heads[0]


def parse(*pieces: bytes, eof: bool = False,
          expect_body: bool = True) -> tuple[ResponseParser, Sink]:
    sink = Sink()
    parser = ResponseParser(sink, expect_body=expect_body)
    for piece in pieces:
        parser.feed(piece)
    if eof:
        parser.feed_eof()
    return parser, sink


def response(head: bytes, body: bytes = b"") -> bytes:
    return head.replace(b"\n", b"\r\n") + b"\r\n" + body


def chunked(*chunks: bytes, ext: bytes = b"", trailers: bytes = b"") -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks)
    return out + b"0\r\n" + trailers + b"\r\n"


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# ---------------------------------------------------------------------------- framings

SSE = b"".join(b"data: {\"n\": %d, \"text\": \"token %d\"}\n\n" % (i, i) for i in range(12))
SSE += b"data: [DONE]\n\n"
GZ_SSE = gzipped(SSE)


@dataclass(frozen=True)
class Case:
    raw: bytes
    status: int
    body: bytes
    keep_alive: bool
    headers: dict[str, str]
    reason: str = "OK"
    version: str = "1.1"
    eof: bool = False  # read-until-close: the response ends with the connection


CASES = {
    "length": Case(
        response(b"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 31\n"
                 b"X-Multi: a\nx-multi:  b \n", b'{"ok": true, "list": [1, 2, 3]}'),
        200, b'{"ok": true, "list": [1, 2, 3]}', True,
        {"content-type": "application/json", "content-length": "31", "x-multi": "a, b"}),
    "chunked-ext-trailers": Case(
        response(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nContent-Type: text/plain\n",
                 b"5;name=value\r\nhello\r\n"
                 b"1 ; a=b ; c\r\n \r\n"
                 b"B\r\nhello world\r\n"
                 b"000a;q=\"x;y\"\r\n0123456789\r\n"
                 b"0;last\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n"),
        200, b"hello hello world0123456789", True,
        {"transfer-encoding": "chunked", "content-type": "text/plain"}),
    "gzip-chunked": Case(
        response(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nContent-Encoding: gzip\n",
                 chunked(*(GZ_SSE[i:i + 37] for i in range(0, len(GZ_SSE), 37)))),
        200, SSE, True, {"transfer-encoding": "chunked", "content-encoding": "gzip"}),
    "deflate-length": Case(
        response(b"HTTP/1.1 200 OK\nContent-Encoding: deflate\nContent-Length: %d\n"
                 % len(zlib.compress(SSE)), zlib.compress(SSE)),
        200, SSE, True,
        {"content-encoding": "deflate", "content-length": str(len(zlib.compress(SSE)))}),
    "interim-then-final": Case(
        response(b"HTTP/1.1 100 Continue\n")
        + response(b"HTTP/1.1 103 Early Hints\nLink: </a.css>; rel=preload\n")
        + response(b"HTTP/1.1 201 Created\nContent-Length: 7\nLocation: /x\n", b"created"),
        201, b"created", True, {"content-length": "7", "location": "/x"}, reason="Created"),
    "until-close": Case(
        response(b"HTTP/1.0 200 OK\nContent-Type: text/plain\n", b"no length: until close\n"),
        200, b"no length: until close\n", False, {"content-type": "text/plain"},
        version="1.0", eof=True),
}


def check(case: Case, parser: ResponseParser, sink: Sink) -> None:
    head = sink.head
    assert (head.status, head.reason, head.version) == (case.status, case.reason, case.version)
    assert dict(head.headers.items()) == case.headers
    assert bytes(sink.body) == case.body
    assert sink.completions == 1
    assert sink.events[0] == "head" and sink.events[-1] == "complete"
    assert parser.done
    assert parser.keep_alive is case.keep_alive
    assert parser.head is head


@pytest.mark.parametrize("name", CASES)
def test_framing_whole(name: str) -> None:
    case = CASES[name]
    parser, sink = parse(case.raw, eof=case.eof)
    check(case, parser, sink)


@pytest.mark.parametrize("name", CASES)
def test_framing_split_at_every_byte(name: str) -> None:
    case = CASES[name]
    for cut in range(len(case.raw) + 1):
        parser, sink = parse(case.raw[:cut], case.raw[cut:], eof=case.eof)
        try:
            check(case, parser, sink)
        except AssertionError as exc:
            raise AssertionError(f"split at byte {cut}: {exc}") from exc


@pytest.mark.parametrize("name", CASES)
def test_framing_one_byte_at_a_time(name: str) -> None:
    case = CASES[name]
    parser, sink = parse(*(case.raw[i:i + 1] for i in range(len(case.raw))), eof=case.eof)
    check(case, parser, sink)


@pytest.mark.parametrize("name", CASES)
def test_framing_completes_exactly_at_last_byte(name: str) -> None:
    """Not a byte early: up to the last byte (or EOF), the response is not complete."""
    case = CASES[name]
    sink = Sink()
    parser = ResponseParser(sink)
    for i in range(len(case.raw)):
        assert sink.completions == 0 and not parser.done, f"complete after {i} bytes"
        parser.feed(case.raw[i:i + 1])
    if case.eof:
        assert sink.completions == 0
        parser.feed_eof()
    assert sink.completions == 1


def test_body_pieces_are_delivered_as_they_arrive() -> None:
    """A stream's first chunk reaches the sink before the rest of the body exists."""
    parser, sink = parse(response(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n"),
                         b"7\r\ndata: 1\r\n")
    assert sink.events == ["head", "body"] and sink.body == b"data: 1"
    parser.feed(b"3\r\nabc")
    assert sink.body == b"data: 1abc" and sink.completions == 0
    parser.feed(b"\r\n0\r\n\r\n")
    assert sink.completions == 1


def test_gzip_stream_is_decoded_incrementally() -> None:
    """A gzip stream flushed per event is decoded per event (SSE over gzip stays live)."""
    comp = zlib.compressobj(wbits=31)
    first = comp.compress(b"data: one\n\n") + comp.flush(zlib.Z_SYNC_FLUSH)
    second = comp.compress(b"data: two\n\n") + comp.flush()
    parser, sink = parse(response(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n"
                                  b"Content-Encoding: gzip\n"),
                         b"%x\r\n%s\r\n" % (len(first), first))
    assert sink.body == b"data: one\n\n" and sink.completions == 0
    parser.feed(b"%x\r\n%s\r\n0\r\n\r\n" % (len(second), second))
    assert sink.body == b"data: one\n\ndata: two\n\n" and sink.completions == 1


def test_length_body_larger_than_one_feed_uses_fast_path_pieces() -> None:
    body = bytes(range(256)) * 400
    head = response(b"HTTP/1.1 200 OK\nContent-Length: %d\n" % len(body))
    pieces = [head + body[:1000]] + [body[i:i + 4096] for i in range(1000, len(body), 4096)]
    parser, sink = parse(*pieces)
    assert sink.body == body and sink.completions == 1 and parser.keep_alive


def test_zero_content_length_completes_with_the_head() -> None:
    parser, sink = parse(response(b"HTTP/1.1 200 OK\nContent-Length: 0\n"))
    assert sink.events == ["head", "complete"] and parser.keep_alive


def test_until_close_with_an_empty_body() -> None:
    parser, sink = parse(response(b"HTTP/1.1 200 OK\n"))
    assert sink.events == ["head"] and not parser.done
    parser.feed_eof()
    assert sink.events == ["head", "complete"] and sink.body == b""
    assert parser.keep_alive is False


def test_until_close_on_http11_is_not_keep_alive() -> None:
    parser, sink = parse(response(b"HTTP/1.1 200 OK\nConnection: keep-alive\n", b"abc"),
                         b"def", eof=True)
    assert sink.body == b"abcdef" and sink.completions == 1
    assert parser.keep_alive is False


def test_transfer_encoding_wins_over_content_length() -> None:
    parser, sink = parse(response(b"HTTP/1.1 200 OK\nContent-Length: 3\n"
                                  b"Transfer-Encoding: chunked\n", chunked(b"hello")))
    assert sink.body == b"hello" and sink.completions == 1


def test_transfer_encoding_is_case_insensitive() -> None:
    _, sink = parse(response(b"HTTP/1.1 200 OK\nTransfer-Encoding:  Chunked \n",
                             chunked(b"ab")))
    assert sink.body == b"ab" and sink.completions == 1


# ---------------------------------------------------------------------------- bodiless

@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(status: int) -> None:
    parser, sink = parse(response(b"HTTP/1.1 %d X\nContent-Length: 10\n"
                                  b"Transfer-Encoding: chunked\n" % status))
    assert sink.events == ["head", "complete"]
    assert sink.head.status == status and sink.body == b""
    assert parser.keep_alive


@pytest.mark.parametrize("framing", [b"Content-Length: 1234\n", b"Transfer-Encoding: chunked\n",
                                     b"Content-Encoding: gzip\n", b""])
def test_head_request_has_no_body(framing: bytes) -> None:
    parser, sink = parse(response(b"HTTP/1.1 200 OK\n" + framing), expect_body=False)
    assert sink.events == ["head", "complete"] and sink.body == b""
    assert parser.done and parser.keep_alive


def test_bytes_after_a_bodiless_response_end_keep_alive() -> None:
    parser, sink = parse(response(b"HTTP/1.1 204 No Content\n") + b"junk")
    assert sink.completions == 1 and parser.keep_alive is False


# ---------------------------------------------------------------------------- interim

def test_interim_responses_are_skipped() -> None:
    raw = (response(b"HTTP/1.1 100 Continue\n") + response(b"HTTP/1.1 100 Continue\n")
           + response(b"HTTP/1.1 103 Early Hints\nLink: </s.css>; rel=preload\n")
           + response(b"HTTP/1.1 200 OK\nContent-Length: 2\n", b"ok"))
    parser, sink = parse(raw)
    assert sink.events == ["head", "body", "complete"]
    assert sink.head.status == 200 and "link" not in sink.head.headers
    assert sink.body == b"ok" and parser.keep_alive


def test_interim_alone_is_not_a_head() -> None:
    parser, sink = parse(response(b"HTTP/1.1 100 Continue\n"))
    assert sink.events == [] and parser.head is None and not parser.done
    with pytest.raises(ServerDisconnected) as info:
        parser.feed_eof()
    assert info.value.got_bytes is True


def test_switching_protocols_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="101"):
        parse(response(b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\n"))


# ---------------------------------------------------------------------------- keep-alive

@pytest.mark.parametrize(("head", "keep_alive"), [
    (b"HTTP/1.1 200 OK\n", True),
    (b"HTTP/1.1 200 OK\nConnection: keep-alive\n", True),
    (b"HTTP/1.1 200 OK\nConnection: close\n", False),
    (b"HTTP/1.1 200 OK\nConnection: Close\n", False),
    (b"HTTP/1.1 200 OK\nConnection: upgrade, close\n", False),
    (b"HTTP/1.0 200 OK\n", False),
    (b"HTTP/1.0 200 OK\nConnection: keep-alive\n", True),
    (b"HTTP/1.0 200 OK\nConnection: Keep-Alive\n", True),
    (b"HTTP/1.0 200 OK\nConnection: close\n", False),
])
def test_keep_alive_rules(head: bytes, keep_alive: bool) -> None:
    parser, sink = parse(response(head + b"Content-Length: 2\n", b"ok"))
    assert sink.completions == 1
    assert parser.keep_alive is keep_alive


def test_extra_bytes_in_the_same_feed_end_keep_alive() -> None:
    parser, sink = parse(response(b"HTTP/1.1 200 OK\nContent-Length: 2\n", b"okHTTP/1.1 200"))
    assert sink.body == b"ok" and sink.completions == 1
    assert parser.keep_alive is False


def test_extra_bytes_after_chunked_end_keep_alive() -> None:
    parser, sink = parse(response(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n",
                                  chunked(b"ok") + b"\r\n"))
    assert sink.body == b"ok" and sink.completions == 1
    assert parser.keep_alive is False


def test_extra_bytes_in_a_later_feed_end_keep_alive() -> None:
    parser, sink = parse(response(b"HTTP/1.1 200 OK\nContent-Length: 2\n", b"ok"))
    assert parser.keep_alive
    parser.feed(b"x")
    assert parser.keep_alive is False and sink.completions == 1 and sink.body == b"ok"


def test_eof_after_a_complete_response_is_harmless() -> None:
    parser, sink = parse(response(b"HTTP/1.1 200 OK\nContent-Length: 2\n", b"ok"), eof=True)
    assert sink.completions == 1 and parser.done


def test_keep_alive_is_false_before_a_head() -> None:
    parser, _ = parse(b"HTTP/1.1 200 OK\r\n")
    assert parser.keep_alive is False and parser.head is None and parser.got_bytes


# ---------------------------------------------------------------------------- content coding

@pytest.mark.parametrize("coding", [b"gzip", b"x-gzip", b"GZIP", b" gzip "])
def test_gzip_codings(coding: bytes) -> None:
    data = gzipped(b"hello gzip " * 50)
    _, sink = parse(response(b"HTTP/1.1 200 OK\nContent-Encoding:%s\nContent-Length: %d\n"
                             % (coding, len(data)), data))
    assert sink.body == b"hello gzip " * 50 and sink.completions == 1


def test_concatenated_gzip_members_are_one_body() -> None:
    data = gzipped(b"first member, ") + gzipped(b"second member")
    for cut in range(1, len(data)):  # the boundary between members in any piece
        _, sink = parse(response(b"HTTP/1.1 200 OK\nContent-Encoding: gzip\n"
                                 b"Transfer-Encoding: chunked\n", chunked(data[:cut], data[cut:])))
        assert sink.body == b"first member, second member" and sink.completions == 1


def test_deflate_is_zlib_wrapped() -> None:
    data = zlib.compress(b"deflated " * 100)
    _, sink = parse(response(b"HTTP/1.1 200 OK\nContent-Encoding: deflate\n"
                             b"Transfer-Encoding: chunked\n", chunked(data[:10], data[10:])))
    assert sink.body == b"deflated " * 100 and sink.completions == 1


@pytest.mark.parametrize("coding", [b"identity", b""])
def test_identity_is_not_decoded(coding: bytes) -> None:
    data = gzipped(b"x")
    _, sink = parse(response(b"HTTP/1.1 200 OK\nContent-Encoding: %s\nContent-Length: %d\n"
                             % (coding, len(data)), data))
    assert sink.body == data


def test_gzip_until_close_is_decoded_at_eof() -> None:
    data = gzipped(b"abc" * 1000)
    parser, sink = parse(response(b"HTTP/1.1 200 OK\nContent-Encoding: gzip\n", data), eof=True)
    assert sink.body == b"abc" * 1000 and sink.completions == 1
    assert parser.keep_alive is False


@pytest.mark.parametrize("body", [
    b"\x1f\x8b\x08\x00garbage that is not deflate data at all",
    b"this is not gzip",
], ids=["bad-deflate-stream", "bad-magic"])
def test_broken_gzip_is_a_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError, match="decode"):
        parse(response(b"HTTP/1.1 200 OK\nContent-Encoding: gzip\nContent-Length: %d\n"
                       % len(body), body))


def test_gzip_with_a_bad_crc_is_a_payload_error() -> None:
    data = bytearray(gzipped(b"checked " * 100))
    data[-8] ^= 0xFF  # the CRC32 in the trailer
    with pytest.raises(PayloadError):
        parse(response(b"HTTP/1.1 200 OK\nContent-Encoding: gzip\nContent-Length: %d\n"
                       % len(data), bytes(data)))


def test_truncated_gzip_is_a_payload_error() -> None:
    data = gzipped(bytes(range(256)) * 64)[:-20]  # no trailer, part of the last block gone
    with pytest.raises(PayloadError):
        parse(response(b"HTTP/1.1 200 OK\nContent-Encoding: gzip\nContent-Length: %d\n"
                       % len(data), data))


def test_raw_deflate_without_zlib_wrapper_is_a_payload_error() -> None:
    comp = zlib.compressobj(wbits=-15)
    data = comp.compress(b"raw deflate") + comp.flush()
    with pytest.raises(PayloadError):
        parse(response(b"HTTP/1.1 200 OK\nContent-Encoding: deflate\nContent-Length: %d\n"
                       % len(data), data))


@pytest.mark.parametrize("coding", [b"br", b"zstd", b"compress", b"gzip, br"])
def test_unsupported_content_encoding(coding: bytes) -> None:
    with pytest.raises(ProtocolError, match="Content-Encoding"):
        parse(response(b"HTTP/1.1 200 OK\nContent-Encoding: %s\nContent-Length: 4\n" % coding,
                       b"abcd"))


@pytest.mark.parametrize("te", [b"gzip", b"gzip, chunked", b"identity", b"chunked, chunked"])
def test_unsupported_transfer_encoding(te: bytes) -> None:
    with pytest.raises(ProtocolError, match="Transfer-Encoding"):
        parse(response(b"HTTP/1.1 200 OK\nTransfer-Encoding: %s\n" % te))


# ---------------------------------------------------------------------------- Content-Length

@pytest.mark.parametrize("lengths", [b"Content-Length: 5\nContent-Length: 6\n",
                                     b"Content-Length: 5, 6\n",
                                     b"Content-Length: 5\ncontent-length: 5, 7\n"])
def test_conflicting_content_length(lengths: bytes) -> None:
    with pytest.raises(ProtocolError, match="conflicting"):
        parse(response(b"HTTP/1.1 200 OK\n" + lengths, b"hello!"))


@pytest.mark.parametrize("lengths", [b"Content-Length: 5\nContent-Length: 5\n",
                                     b"Content-Length: 5, 5\n", b"Content-Length: 5,5, 5\n"])
def test_equal_duplicate_content_length(lengths: bytes) -> None:
    parser, sink = parse(response(b"HTTP/1.1 200 OK\n" + lengths, b"hello"))
    assert sink.body == b"hello" and sink.completions == 1 and parser.keep_alive


@pytest.mark.parametrize("value", [b"abc", b"-1", b"+5", b"5.0", b"0x10", b"", b"1 2"])
def test_invalid_content_length(value: bytes) -> None:
    with pytest.raises(ProtocolError, match="Content-Length"):
        parse(response(b"HTTP/1.1 200 OK\nContent-Length: %s\n" % value, b"hello"))


def test_unicode_digit_content_length_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse(response(b"HTTP/1.1 200 OK\nContent-Length: \xb2\n", b"hi"))


# ---------------------------------------------------------------------------- chunk framing

@pytest.mark.parametrize("size_line", [b"zz", b"", b"-1", b"0x5", b"5 5", b";ext", b"g"])
def test_invalid_chunk_size(size_line: bytes) -> None:
    with pytest.raises(ProtocolError, match="chunk size"):
        parse(response(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n",
                       size_line + b"\r\nhello\r\n0\r\n\r\n"))


def test_chunk_size_line_too_long() -> None:
    with pytest.raises(ProtocolError, match="too long"):
        parse(response(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n",
                       b"5;" + b"x" * 2000))


def test_chunk_data_not_followed_by_crlf() -> None:
    with pytest.raises(ProtocolError, match="CRLF"):
        parse(response(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"3\r\nabcde\r\n"))


def test_huge_trailers_are_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="trailers"):
        parse(response(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n",
                       b"0\r\nX-T: " + b"x" * (MAX_HEAD + 10)))


# ---------------------------------------------------------------------------- malformed heads

@pytest.mark.parametrize("status_line", [
    b"HTTP/2 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 abc OK",
    b"ICY 200 OK", b"HTTP/1.1", b"garbage", b"HTTP/1.10 200 OK", b"http/1.1 200 OK",
    b"HTTP/1.1  200 OK", b" HTTP/1.1 200 OK", b"SSH-2.0-OpenSSH_9.6",
])
def test_malformed_status_line(status_line: bytes) -> None:
    with pytest.raises(ProtocolError, match="status line"):
        parse(status_line + b"\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("line", [
    b" folded: continuation", b"\tfolded", b"Name : value", b"Name\t: value", b"NoColon",
    b": no name",
], ids=["obs-fold-space", "obs-fold-tab", "space-before-colon", "tab-before-colon",
        "no-colon", "empty-name"])
def test_malformed_header_line(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="header line"):
        parse(b"HTTP/1.1 200 OK\r\nX-First: 1\r\n" + line + b"\r\nContent-Length: 0\r\n\r\n")


def test_head_larger_than_limit_in_pieces() -> None:
    sink = Sink()
    parser = ResponseParser(sink)
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ProtocolError, match="larger than"):
        for _ in range(MAX_HEAD // 1000 + 2):
            parser.feed(b"X-Pad: " + b"p" * 991 + b"\r\n")
    assert sink.events == []


def test_head_just_under_limit_is_fine() -> None:
    pad = b"X-Pad: " + b"p" * 1000 + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\n" + pad * ((MAX_HEAD - 100) // len(pad))
    assert len(head) < MAX_HEAD
    _, sink = parse(head + b"Content-Length: 0\r\n\r\n")
    assert sink.completions == 1 and sink.head.headers["x-pad"].startswith("p" * 1000)


def test_head_larger_than_limit_in_one_feed() -> None:
    pad = b"X-Pad: " + b"p" * 1000 + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\n" + pad * (MAX_HEAD // len(pad) + 5)
    assert len(head) > MAX_HEAD
    with pytest.raises(ProtocolError, match="larger than"):
        parse(head + b"Content-Length: 0\r\n\r\n")


# ---------------------------------------------------------------------------- EOF

def test_eof_before_any_byte() -> None:
    parser = ResponseParser(Sink())
    with pytest.raises(ServerDisconnected) as info:
        parser.feed_eof()
    assert info.value.got_bytes is False and parser.got_bytes is False


def test_empty_feed_is_not_a_byte() -> None:
    parser = ResponseParser(Sink())
    parser.feed(b"")
    with pytest.raises(ServerDisconnected) as info:
        parser.feed_eof()
    assert info.value.got_bytes is False


@pytest.mark.parametrize("partial", [b"H", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nA: b\r\n"])
def test_eof_in_the_head(partial: bytes) -> None:
    parser, sink = parse(partial)
    with pytest.raises(ServerDisconnected, match="middle of the response head") as info:
        parser.feed_eof()
    assert info.value.got_bytes is True and sink.events == []


@pytest.mark.parametrize("body", [
    b"Content-Length: 10\r\n\r\nshort",
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello",
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n",
], ids=["length", "chunk-size", "chunk-data", "chunk-end", "next-size", "trailers",
        "mid-trailers"])
def test_eof_in_the_body(body: bytes) -> None:
    parser, sink = parse(b"HTTP/1.1 200 OK\r\n" + body)
    assert sink.events[0] == "head" and sink.completions == 0
    with pytest.raises(PayloadError, match="before the response body was complete"):
        parser.feed_eof()
    assert sink.completions == 0


# ---------------------------------------------------------------------------- heads and Headers

def test_parse_head_fields() -> None:
    head = parse_head(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\n"
                      b"Content-Type:application/json\r\nX-Empty:\r\nSet-Cookie: a=1\r\n"
                      b"set-cookie: b=2\r\nX-Latin: caf\xe9")
    assert (head.status, head.reason, head.version) == (429, "Too Many Requests", "1.1")
    h = head.headers
    assert isinstance(h, Headers)
    assert h.get("retry-after") == "7" == h["RETRY-AFTER"] == h.get("Retry-After")
    assert h["content-type"] == "application/json"
    assert h["x-empty"] == ""
    assert h["set-cookie"] == "a=1, b=2"
    assert h["x-latin"] == "caf\xe9"
    assert "Retry-After" in h and "retry-after" in h and "nope" not in h and 1 not in h
    assert h.get("missing") is None and h.get("missing", "d") == "d"
    with pytest.raises(KeyError):
        h["missing"]
    assert len(h) == 5
    assert [k for k, _ in h.items()] == ["retry-after", "content-type", "x-empty",
                                         "set-cookie", "x-latin"]
    assert "retry-after" in repr(h)


def test_status_line_without_reason() -> None:
    head = parse_head(b"HTTP/1.1 200")
    assert (head.status, head.reason, head.version, len(head.headers)) == (200, "", "1.1", 0)


def test_http10_version() -> None:
    assert parse_head(b"HTTP/1.0 404 Not Found").version == "1.0"


def test_malformed_header_line_is_shown_as_its_bytes() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_head(b"HTTP/1.1 200 OK\r\nX-Ok: 1\r\nName : caf\xe9")
    assert str(info.value) == "malformed header line: b'Name : caf\\xe9'"
