"""providers/eventstream.py: the AWS event stream decoder, fed frames as the fake Bedrock
writes them (its own encoder), in pieces of every size."""

from __future__ import annotations

import struct
import uuid
import zlib

import orjson
import pytest

from failoverd.providers.eventstream import Decoder, FrameError
from tests.fakes.bedrock import event, exception, frame

STREAM = (event("messageStart", {"role": "assistant"})
          + event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}})
          + exception("throttlingException", "Too many requests"))


def test_whole_messages_with_their_headers_and_payloads() -> None:
    messages = Decoder().feed(STREAM)
    assert [(m.message_type, m.event_type) for m in messages] == [
        ("event", "messageStart"), ("event", "contentBlockDelta"), ("exception", "")]
    assert orjson.loads(messages[1].payload)["delta"] == {"text": "Hi"}
    assert messages[2].headers[":exception-type"] == "throttlingException"
    assert orjson.loads(messages[2].payload) == {"message": "Too many requests"}


@pytest.mark.parametrize("size", [1, 3, 11, 12, 13, 50])
def test_bytes_in_pieces_of_any_size(size: int) -> None:
    decoder = Decoder()
    got = []
    for at in range(0, len(STREAM), size):
        assert decoder.needed >= 1
        got.extend(decoder.feed(STREAM[at:at + size]))
    assert [m.event_type for m in got] == ["messageStart", "contentBlockDelta", ""]
    assert decoder.pending == 0


def test_needed_is_the_prelude_then_the_rest_of_the_message() -> None:
    decoder = Decoder()
    assert decoder.needed == 12
    one = event("messageStart", {"role": "assistant"})
    assert decoder.feed(one[:12]) == []
    assert decoder.needed == len(one) - 12
    assert len(decoder.feed(one[12:])) == 1


def test_a_bad_message_crc_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="message CRC"):
        Decoder().feed(event("contentBlockDelta", {"delta": {"text": "x"}}, corrupt=True))


def test_a_bad_prelude_crc_or_impossible_length_is_a_frame_error() -> None:
    good = event("messageStart", {"role": "assistant"})
    broken = good[:8] + bytes([good[8] ^ 1]) + good[9:]
    with pytest.raises(FrameError, match="prelude CRC"):
        Decoder().feed(broken)
    prelude = struct.pack(">II", 8, 0)
    with pytest.raises(FrameError, match="impossible lengths"):
        Decoder().feed(prelude + struct.pack(">I", zlib.crc32(prelude)))


def test_header_value_types() -> None:
    marker = uuid.uuid4()
    head = (b"\x04flag\x00" + b"\x03num\x04" + struct.pack(">i", -7)
            + b"\x04time\x08" + struct.pack(">q", 1_700_000_000_000)
            + b"\x03raw\x06" + struct.pack(">H", 2) + b"\x01\x02"
            + b"\x02id\x09" + marker.bytes)
    total = 12 + len(head) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + head
    message += struct.pack(">I", zlib.crc32(message))
    (decoded,) = Decoder().feed(message)
    assert decoded.headers == {"flag": True, "num": -7, "time": 1_700_000_000_000,
                               "raw": b"\x01\x02", "id": marker}
    assert decoded.payload == b""


def test_an_unknown_header_type_is_a_frame_error() -> None:
    bad = frame({":event-type": "x"}, b"{}")
    # the header's type byte (after its length and name) turned into 42
    at = 12 + 1 + len(":event-type")
    bad = bad[:at] + b"\x2a" + bad[at + 1:-4]
    bad += struct.pack(">I", zlib.crc32(bad))
    with pytest.raises(FrameError):
        Decoder().feed(bad)
