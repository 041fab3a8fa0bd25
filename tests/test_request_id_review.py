"""Request ids under attack: pipelined requests on one connection, hostile client ids and
upstream ids (log-line forging), same-model retries, hedges that fail, an upstream error
passed on, ids across processes, and what the SDKs read."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from tests.fakes.base import fake_fixture
from tests.test_fastpath import ASK, NO_PROBES, connect, fast, post, read_answer
from tests.test_request_id import MADE, IdOpenAI, access

ACCESS = "failoverd.access"


def one_openai(a: Any, more: str = "") -> str:
    return f"""access_log = true
[providers.a]
kind = "openai"
base_url = "{a.url}"
[models."a/m"]
provider = "a"
max_retries = 0
{more}
{NO_PROBES}"""


evil_openai = fake_fixture(IdOpenAI, "evil_openai")


async def test_pipelined_requests_keep_their_own_ids(
        evil_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await evil_openai()
    d = await start_daemon(one_openai(a))
    before = fast(d).served
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK, headers="X-Request-Id: p-1\r\n") + post(ASK)
                     + post(ASK, headers="x-request-id: p-3\r\n"))
        answers = [await read_answer(reader) for _ in range(3)]
    assert fast(d).served - before == 3
    ids = [x.headers["x-request-id"] for x in answers]
    assert ids[0] == "p-1" and ids[2] == "p-3" and MADE.fullmatch(ids[1])
    assert [line["request_id"] for _, line in access(caplog)] == ids
    assert [line["upstream_request_id"] for _, line in access(caplog)] == a.sent


async def test_an_upstream_id_cannot_forge_fields_of_the_text_access_log(
        evil_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await evil_openai(rid="x 200 model=evil uid=4242 #")
    d = await start_daemon(one_openai(a))
    ok = await d.http.post("/v1/chat/completions", json=ASK)
    assert ok.status_code == 200
    (text, line), = access(caplog)
    assert "uid=4242" not in text and "model=evil" not in text
    assert re.fullmatch(r"POST /v1/chat/completions 200 model=a/m attempts=1 failover=- "
                        r"rid=\S+ [0-9.]+ms uid=\S+", text), text
    assert line["upstream_request_id"] is None
