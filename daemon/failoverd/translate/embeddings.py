"""The OpenAI Embeddings API as failoverd's canonical embeddings form.

A request is OpenAI's body (``model``, ``input``, ``encoding_format``, ``dimensions``,
``user``, and whatever else a compatible server takes); an answer is OpenAI's list of
embeddings. Adapters for other APIs (Gemini, Ollama, simulated) get the inputs as
:func:`texts` gives them and build the answer with :func:`answer`, which encodes the vectors
as the client asked: JSON floats, or base64 of little-endian float32 (what OpenAI sends, and
what the official SDKs ask for unless told otherwise).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any

from failoverd.errors import RequestError
from failoverd.translate.inputs import is_token, items

ENCODINGS = ("float", "base64")
MAX_INPUTS = 2048  # OpenAI's own limit on the inputs of one request


def validate(body: Any) -> dict[str, Any]:
    """The request, checked: raises RequestError naming the first problem."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is required: an embedding model's id or a chain of them",
                           param="model")
    if "input" not in body:
        raise RequestError("'input' is required: a string, an array of strings, or token "
                           "arrays", param="input")
    _check_input(body["input"])
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODINGS:
        raise RequestError(f"'encoding_format' must be one of {', '.join(ENCODINGS)}, got "
                           f"{encoding!r}", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise RequestError(f"'dimensions' must be a positive integer, got {dimensions!r}",
                           param="dimensions")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise RequestError("'user' must be a string", param="user")
    return body


def _check_input(value: Any) -> None:
    if isinstance(value, str):
        if not value:
            raise RequestError("'input' must not be an empty string", param="input")
        return
    if not isinstance(value, list) or not value:
        raise RequestError("'input' must be a non-empty string, or a non-empty array of strings "
                           "or of token arrays", param="input")
    if len(value) > MAX_INPUTS:
        raise RequestError(f"'input' holds {len(value)} items; at most {MAX_INPUTS} per request",
                           param="input")
    if all(is_token(v) for v in value):
        return  # one token array
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise RequestError(f"'input[{i}]' must not be an empty string", param="input")
        elif not (isinstance(item, list) and item and all(is_token(t) for t in item)):
            raise RequestError(f"'input[{i}]' must be a non-empty string or a non-empty array "
                               "of token ids (non-negative integers), and all items one kind",
                               param="input")
    kinds = {isinstance(item, str) for item in value}
    if len(kinds) > 1:
        raise RequestError("'input' mixes strings and token arrays", param="input")


def texts(body: dict[str, Any], api: str) -> list[str]:
    """The inputs as strings, for an API that takes text only; token ids are refused (a
    RequestError: the next candidate may take them)."""
    given = items(body["input"])
    if all(isinstance(v, str) for v in given):
        return given
    raise RequestError(f"{api} embeds text only, not token ids", param="input")


def count(body: dict[str, Any]) -> int:
    """How many embeddings the request asks for."""
    return len(items(body["input"]))


def encode(vector: Sequence[float], encoding: str | None) -> list[float] | str:
    """A vector as the client asked for it; ValueError for one that is no list of float32
    numbers (a null, a nested list, a value beyond float32's range)."""
    if encoding == "base64":
        try:
            packed = struct.pack(f"<{len(vector)}f", *vector)
        except (struct.error, OverflowError, TypeError) as exc:
            raise ValueError(f"not a vector of float32 numbers: {exc}") from None
        return base64.b64encode(packed).decode("ascii")
    return list(vector)


def ignored_dimensions(lengths: Sequence[int], asked: int | None) -> str | None:
    """Why vectors of these `lengths` do not answer a request for `asked` dimensions (a
    server that ignores ``dimensions``: llama.cpp, LM Studio, older Ollama), else None. Not
    cut here: only some models' vectors (OpenAI's text-embedding-3) keep their meaning cut."""
    if not asked or not lengths or all(n == asked for n in lengths):
        return None
    got = ", ".join(str(n) for n in sorted(set(lengths)))
    return (f"answered with vectors of {got} dimensions where {asked} were asked for (the "
            "model ignores 'dimensions')")


def answer(vectors: Sequence[Sequence[float]], body: dict[str, Any], model_name: str,
           prompt_tokens: int) -> dict[str, Any]:
    """OpenAI's answer for vectors in input order."""
    encoding = body.get("encoding_format")
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v, encoding)}
                 for i, v in enumerate(vectors)],
        "model": model_name,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def vectors_ok(vectors: Any, expected: int) -> bool:
    """Whether an upstream's vectors are `expected` non-empty lists of numbers."""
    return isinstance(vectors, list) and len(vectors) == expected and all(
        isinstance(v, list) and v and all(
            type(x) is float or (type(x) is int) for x in v) for v in vectors)


def is_answer(parsed: Any, expected: int) -> bool:
    """Whether an upstream's 200 is a usable answer: a list of `expected` embeddings."""
    data = parsed.get("data") if isinstance(parsed, dict) else None
    return isinstance(data, list) and len(data) == expected and all(
        isinstance(d, dict) and isinstance(d.get("embedding"), (list, str)) and d["embedding"]
        for d in data)


def conform(parsed: dict[str, Any], encoding: str | None) -> bool:
    """Puts an upstream's vectors in the encoding the client asked for, where a server sent
    the other one (some OpenAI-compatible servers ignore ``encoding_format``); True when it
    changed anything."""
    changed = False
    for item in parsed["data"]:
        vector = item["embedding"]
        if encoding == "base64" and isinstance(vector, list):
            item["embedding"] = encode(vector, "base64")
            changed = True
        elif encoding != "base64" and isinstance(vector, str):
            item["embedding"] = decode(vector)
            changed = True
    return changed


def decode(text: str) -> list[float]:
    """A base64 vector of little-endian float32 as floats; ValueError for one that is not
    (bad base64, empty, or not a whole number of floats: a cut vector)."""
    data = base64.b64decode(text, validate=True)
    if not data or len(data) % 4:
        raise ValueError(f"{len(data)} bytes are no vector of float32 numbers")
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def dimensions_of(vector: list[float] | str) -> int:
    """The length of a vector in either encoding (ValueError for a broken base64 one)."""
    if isinstance(vector, str):
        return len(base64.b64decode(vector, validate=True)) // 4
    return len(vector)
