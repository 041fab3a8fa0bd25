"""The benchmark: failoverd against the upstream directly and against LiteLLM's proxy.

`python -m tests.bench.run --help`. Not part of the normal test run (nothing here is named
test_*); tests/test_bench_smoke.py checks that it runs.
"""
