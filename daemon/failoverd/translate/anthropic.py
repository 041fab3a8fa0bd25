"""Anthropic Messages <-> the canonical form (OpenAI Chat Completions dicts), both ways.

Front end (a client speaking Anthropic, served by any provider)::

    canonical = anthropic_to_canonical(request_body)          # RequestError / TranslationError
    answer = canonical_to_anthropic_response(completion.body, served_model_id)
    encoder = AnthropicStreamEncoder(served_model_id)
    for chunk in chunks: write(encoder.feed(chunk.data))
    write(encoder.finish())                                    # or encoder.error_event(t, msg)
    error = anthropic_error_body("overloaded_error", "...")   # + anthropic_error_type(reason)

Adapter (failoverd.providers.anthropic)::

    request = canonical_to_anthropic(body, model.name, default_max_tokens)
    completion = anthropic_to_canonical_response(response_json, model.name)
    decoder = AnthropicStreamDecoder(model.name); decoder.feed(event, data) -> [chunk dicts]

Decisions, so every translator and operator can rely on them:

* Prompt-caching breakpoints (``cache_control``) travel as LiteLLM carries them in the
  OpenAI shape: on content parts (text, image), on tools, on tool calls, on a tool message
  (a breakpoint on the ``tool_result`` block), on a system/user/assistant message (its
  content's last block; an assistant turn's text is one string, so a breakpoint on one of its
  text blocks marks that text), and the request's top-level one (automatic caching). Towards
  Anthropic they go back on the same blocks, unchanged (Anthropic judges them: more than 4 is
  its 400); the OpenAI-compatible adapter strips them all (OpenAI refuses unknown fields),
  Gemini's and Ollama's never read them. Cache writes come back as LiteLLM's
  ``usage.cache_creation_input_tokens`` (reads as ``prompt_tokens_details.cached_tokens``),
  both counted in ``prompt_tokens``; Anthropic clients get both fields back.
* Signed thinking round-trips as LiteLLM carries it: a canonical assistant message has
  ``thinking_blocks`` (``{"type": "thinking", "thinking", "signature"}`` and
  ``{"type": "redacted_thinking", "data"}``) next to ``reasoning_content``; in a stream the
  text is ``reasoning_content`` and the signature (sent before the block's stop) and redacted
  blocks are deltas of ``thinking_blocks`` (see anthropic_stream). Anthropic answers fill them,
  Anthropic clients get them back signed and replay them, and towards Anthropic they go first
  in their assistant turn. A client's thinking block without a signature (another provider's
  reasoning, echoed back) cannot be replayed and is dropped. Anthropic needs the last
  assistant turn of a tool-use loop to start with its signed thinking when thinking is on:
  when that turn has none (another provider served it), the request goes without thinking.
  An assistant turn with interleaved thinking (thinking between tool calls, the
  interleaved-thinking beta) from an Anthropic client also carries ``anthropic_order`` (its
  block kinds: "t" thinking, "x" text, "u" tool use) and its text blocks as separate text
  parts, so it goes back to Anthropic as it came, not with its thinking moved first; streamed
  answers keep the order as they arrive; a non-streamed answer's canonical message carries
  ``anthropic_order`` with each text block's length ("tx9utx13u", its text being one string),
  so Anthropic clients get the blocks in order and an OpenAI client that sends the message
  back gets them to Anthropic in order too (anthropic_common.in_order). Only the Anthropic
  adapter sends ``thinking_blocks``; the OpenAI-compatible one strips them (OpenAI refuses
  unknown message fields), Gemini's and Ollama's never read them.
* Other reasoning in answers (DeepSeek/vLLM ``reasoning_content``) reaches Anthropic clients
  as ``thinking`` blocks with an empty signature, streamed and not. Replayed, such a block
  stays in ``thinking_blocks`` with its empty signature: never sent to Anthropic, it is the
  ``reasoning_content`` the OpenAI-compatible adapter gives a model that wants its reasoning
  back in a tool loop (DeepSeek's thinking mode; see providers.openai).
* ``tool_result.is_error`` has no canonical field; the result text is kept as is.
* A ``stop_sequence`` stop travels as a string ``stop_reason`` beside ``finish_reason: "stop"``
  (vLLM's OpenAI-compatible field), so Anthropic clients get ``stop_reason: "stop_sequence"``
  and the sequence from Anthropic and vLLM upstreams; OpenAI's API does not tell (end_turn).
* ``thinking: {"type": "adaptive"}`` is ``reasoning_effort: "medium"``.
* Thinking budget <-> ``reasoning_effort``: budget < 4096 is ``low``, < 16384 ``medium``,
  else ``high``; back: ``minimal`` 1024, ``low`` 2048, ``medium`` 8192, ``high`` 24576 tokens
  (cut to max_tokens - 1; below Anthropic's minimum of 1024 thinking is left off). Thinking
  is left off too when tool_choice forces a call ("required" or a named function), which
  Anthropic refuses together with thinking.
* Tool-call ids towards Anthropic must match ``^[a-zA-Z0-9_-]+$`` and be unique in the
  request; ids from other providers (Kimi's ``functions.f:0``, Gemini's and Ollama's
  ``call_0`` repeated in every answer) are rewritten, their tool results with them.
* OpenAI temperature runs 0..2, Anthropic's 0..1: values above 1 are clamped to 1. Claude
  models reject temperature and top_p together, so only temperature is sent then; with
  thinking enabled Anthropic accepts neither, so both are left off.
* Not expressible (TranslationError naming the field): document/search-result blocks,
  server tools (web_search, bash, computer, ...), ``top_k``, ``output_config`` settings
  other than ``format`` towards canonical; ``n`` > 1, ``response_format`` json_object,
  logprobs, penalties, audio, ``logit_bias`` towards Anthropic.
* Structured outputs: Anthropic's ``output_config.format`` (json_schema) is the canonical
  ``response_format`` json_schema, both ways.
* Images inside tool results are a canonical extension (a tool message whose content has
  image_url parts): Anthropic takes them; the OpenAI-compatible adapter moves them to the
  user message after the tool results (OpenAI refuses images in any other role, a 400 that
  would end the session); Gemini's and Ollama's adapters refuse them (the candidate is
  skipped as incapable).
* Towards Anthropic: system/developer messages anywhere are collected into ``system`` in
  order; consecutive same-role turns merge (tool results first in their user turn); empty
  turns are left out; text blocks that are empty or only whitespace (the blank lines
  before another provider's tool call, a command's lone newline) are left out, as
  Anthropic refuses them in every later turn of the session; a final assistant prefill
  loses trailing whitespace (Anthropic refuses it); a message's ``name`` is dropped;
  max_tokens is capped at the model's max_output_tokens when the provider passes it.
* Tool-call arguments that are not a JSON object: towards Anthropic a TranslationError;
  in an answer to an Anthropic client they are kept as ``{"_raw_arguments": text}``.
* Sampling hints with no target field (``seed``, ``service_tier``, ``store``, OpenAI
  ``metadata``, ``prompt_cache_key``, ``verbosity``) are dropped.
"""

from __future__ import annotations

from failoverd.failures import FailureReason
from failoverd.translate.anthropic_common import EFFORT_BUDGET
from failoverd.translate.anthropic_front import anthropic_to_canonical, effort_for_budget
from failoverd.translate.anthropic_request import (
    ANTHROPIC_IMAGE_TYPES,
    DEFAULT_MAX_TOKENS,
    canonical_to_anthropic,
)
from failoverd.translate.anthropic_response import (
    anthropic_error_body,
    anthropic_to_canonical_response,
    canonical_to_anthropic_response,
)
from failoverd.translate.anthropic_stream import (
    AnthropicStreamDecoder,
    AnthropicStreamEncoder,
    error_event,
    sse_event,
)

__all__ = [
    "ANTHROPIC_IMAGE_TYPES",
    "DEFAULT_MAX_TOKENS",
    "EFFORT_BUDGET",
    "AnthropicStreamDecoder",
    "AnthropicStreamEncoder",
    "anthropic_error_body",
    "anthropic_error_type",
    "anthropic_to_canonical",
    "anthropic_to_canonical_response",
    "canonical_to_anthropic",
    "canonical_to_anthropic_response",
    "effort_for_budget",
    "error_event",
    "sse_event",
]

_ERROR_TYPES = {
    FailureReason.RATE_LIMIT: "rate_limit_error",
    FailureReason.OVERLOADED: "overloaded_error",
    FailureReason.AUTH: "authentication_error",
    FailureReason.BILLING: "billing_error",
    FailureReason.NOT_FOUND: "not_found_error",
    FailureReason.CONTEXT_OVERFLOW: "invalid_request_error",
    FailureReason.CONTENT_FILTER: "invalid_request_error",
    FailureReason.BAD_REQUEST: "invalid_request_error",
    FailureReason.TIMEOUT: "timeout_error",
}


def anthropic_error_type(reason: FailureReason | None) -> str:
    """The Anthropic ``error.type`` to report a failure reason under (api_error otherwise)."""
    return _ERROR_TYPES.get(reason, "api_error") if reason is not None else "api_error"
