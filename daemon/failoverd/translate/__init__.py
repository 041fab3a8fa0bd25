"""Translation between the canonical form (OpenAI Chat Completions dicts) and other APIs.

One module per foreign API (``anthropic_request``, ``anthropic_stream``, ...) plus shared
helpers (``images``). Everything here is pure: dicts in, dicts (or bytes) out, no I/O.
Input that cannot be expressed on the target raises failoverd.errors.TranslationError naming
the field path; malformed input raises RequestError.
"""
