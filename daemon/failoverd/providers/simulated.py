"""The `simulated` provider kind: deterministic local answers, no network.

For the demo and for trying a configuration without API keys. `simulate_latency` delays each
answer; `simulate_failure` makes every call fail with that reason, so a demo chain shows a
failover.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

from failoverd.config import ModelConfig, ProbeKind, ProviderConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.providers.base import AttemptLimits, Chunk, Completion

_STATUS = {
    FailureReason.RATE_LIMIT: 429, FailureReason.OVERLOADED: 529,
    FailureReason.SERVER_ERROR: 500, FailureReason.AUTH: 401, FailureReason.BILLING: 402,
    FailureReason.NOT_FOUND: 404, FailureReason.CONTEXT_OVERFLOW: 400,
    FailureReason.CONTENT_FILTER: 400, FailureReason.BAD_REQUEST: 400,
}


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content
                                if isinstance(p, dict) and p.get("type") == "text")
    return ""


class SimulatedProvider:
    """Answers every request locally and deterministically."""

    def __init__(self, config: ProviderConfig, client: Any = None) -> None:
        self.config = config

    async def _behave(self, model: ModelConfig) -> None:
        if self.config.simulate_latency:
            await asyncio.sleep(self.config.simulate_latency)
        reason = self.config.simulate_failure
        if reason is not None:
            raise UpstreamError(
                reason, f"simulated {reason} from provider {self.config.name}",
                status=_STATUS.get(reason), provider=self.config.name, model=model.id,
                retry_after=1.0 if reason is FailureReason.RATE_LIMIT else None,
            )

    @staticmethod
    def _answer(body: dict[str, Any], model: ModelConfig) -> tuple[str, str]:
        said = _last_user_text(body)
        digest = hashlib.sha256(f"{model.id}\0{said}".encode()).hexdigest()[:12]
        words = len(said.split())
        text = (f"[{model.id}] simulated answer {digest}: your message had {words} "
                f"word{'s' if words != 1 else ''}.")
        return text, f"chatcmpl-sim-{digest}"

    @staticmethod
    def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages") or ()
                     if isinstance(m, dict)) // 4 + 1
        completion = len(text) // 4 + 1
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    async def complete(self, body: dict[str, Any], model: ModelConfig,
                       limits: AttemptLimits) -> Completion:
        await self._behave(model)
        text, cid = self._answer(body, model)
        return Completion({
            "id": cid, "object": "chat.completion", "created": int(time.time()),
            "model": model.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": self._usage(body, text),
        })

    async def stream(self, body: dict[str, Any], model: ModelConfig,
                     limits: AttemptLimits) -> AsyncIterator[Chunk]:
        await self._behave(model)
        text, cid = self._answer(body, model)
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> Chunk:
            return Chunk.of({"id": cid, "object": "chat.completion.chunk", "created": created,
                             "model": model.name,
                             "choices": [{"index": 0, "delta": delta,
                                          "finish_reason": finish}]})

        yield chunk({"role": "assistant", "content": ""})
        for i, word in enumerate(text.split(" ")):
            yield chunk({"content": word if i == 0 else " " + word})
        yield chunk({}, "stop")

    async def probe(self, model: ModelConfig, kind: ProbeKind, timeout: float,
                    max_tokens: int) -> None:
        if kind != "none":
            await self._behave(model)
