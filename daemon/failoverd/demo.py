"""`failoverd --demo`: start the daemon on the embedded config and show requests served."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from failoverd.config import Config
from failoverd.supervisor import Supervisor

_REQUESTS: tuple[tuple[str, dict[str, object]], ...] = (
    ("default chain (primary is rate-limited, so it fails over)",
     {"model": "default", "messages": [{"role": "user", "content": "Hello from the demo!"}]}),
    ("named chain 'fast', streaming",
     {"model": "fast", "stream": True,
      "messages": [{"role": "user", "content": "Stream me a short answer."}]}),
    ("embeddings from chain 'vectors' (its first model is rate-limited too)",
     {"model": "vectors", "input": ["first text", "second text"], "dimensions": 4}),
    ("pool 'small' (one model at two providers, taking turns)",
     {"model": "small", "messages": [{"role": "user", "content": "Whose turn is it?"}]}),
    ("pool 'small' again: the other provider's turn",
     {"model": "small", "messages": [{"role": "user", "content": "And now?"}]}),
    ("chain 'hedged' (its first model answers 2 s late: raced by the next after 0.5 s)",
     {"model": "hedged", "messages": [{"role": "user", "content": "Quick, please."}]}),
)


async def _show(session: aiohttp.ClientSession, title: str, body: dict[str, object]) -> None:
    print(f"\n--- {title}")
    path = "/v1/embeddings" if "input" in body else "/v1/chat/completions"
    print(f"POST {path} {orjson.dumps(body).decode()}")
    async with session.post(f"http://failoverd{path}", json=body) as resp:
        print(f"HTTP {resp.status}")
        for name in ("x-failoverd-model", "x-failoverd-attempts", "x-failoverd-failover",
                     "x-failoverd-hedge"):
            if name in resp.headers:
                print(f"{name}: {resp.headers[name]}")
        if body.get("stream"):
            pieces = []
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    for choice in orjson.loads(line[6:])["choices"]:
                        pieces.append(choice["delta"].get("content") or "")
            print("streamed:", "".join(pieces))
        else:
            answer = await resp.json(loads=orjson.loads)
            if "data" in answer:
                for item in answer["data"]:
                    print(f"embedding {item['index']}:", item["embedding"])
            else:
                print("answer:", answer["choices"][0]["message"]["content"])


async def run_demo(config: Config, *, once: bool) -> int:
    sup = Supervisor(config)
    task = asyncio.create_task(sup.run())
    ready = asyncio.create_task(sup.ready.wait())
    await asyncio.wait((task, ready), return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        await task  # raises the startup error
        return 1
    sock = config.daemon.socket
    print(f"failoverd demo listening on {sock}")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session:
        for title, body in _REQUESTS:
            await _show(session, title, body)
    if once:
        sup.request_stop()
    else:
        print(f"\nThe daemon keeps serving; try:\n  curl --unix-socket {sock} "
              "http://failoverd/v1/chat/completions -H 'content-type: application/json' "
              "-d '{\"model\":\"default\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
              "\nCtrl-C stops it.")
    await task
    return 0
