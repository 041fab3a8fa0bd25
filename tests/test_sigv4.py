"""providers/sigv4.py against AWS's published Signature Version 4 test suite, and the way Bedrock
needs it (double-encoded paths, session tokens, the signing clock)."""

from __future__ import annotations

import calendar

import pytest

from failoverd.providers.sigv4 import Signer, canonical_request
from tests.fakes.bedrock import expected_signature

# the suite's credentials, instant, region and service
SUITE_KEY = "AKIDEXAMPLE"
SUITE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SUITE_TIME = calendar.timegm((2015, 8, 30, 12, 36, 0))
SUITE_TOKEN = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"
SCOPE = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"


def suite_signer(token: str = "") -> Signer:
    return Signer(SUITE_KEY, SUITE_SECRET, "us-east-1", "service", token,
                  now=lambda: SUITE_TIME)


@pytest.mark.parametrize(("name", "method", "url", "headers", "body", "signed", "signature"), [
    ("get-vanilla", "GET", "https://example.amazonaws.com/", {}, b"", "host;x-amz-date",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("post-vanilla", "POST", "https://example.amazonaws.com/", {}, b"", "host;x-amz-date",
     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("get-vanilla-query-order-key-case", "GET",
     "https://example.amazonaws.com/?Param2=value2&Param1=value1", {}, b"", "host;x-amz-date",
     "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("post-x-www-form-urlencoded", "POST", "https://example.amazonaws.com/",
     {"Content-Type": "application/x-www-form-urlencoded"}, b"Param1=value1",
     "content-type;host;x-amz-date",
     "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
])
def test_the_published_suite(name: str, method: str, url: str, headers: dict[str, str],
                             body: bytes, signed: str, signature: str) -> None:
    added = suite_signer().sign(method, url, headers, body)
    assert added["X-Amz-Date"] == "20150830T123600Z"
    assert "X-Amz-Security-Token" not in added
    assert added["Authorization"] == (f"AWS4-HMAC-SHA256 Credential={SCOPE}, "
                                      f"SignedHeaders={signed}, Signature={signature}"), name


def test_the_suites_session_token_case() -> None:
    added = suite_signer(SUITE_TOKEN).sign("GET", "https://example.amazonaws.com/", {}, None)
    assert added["X-Amz-Security-Token"] == SUITE_TOKEN
    assert added["Authorization"].endswith(
        "SignedHeaders=host;x-amz-date;x-amz-security-token, "
        "Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8")


def test_the_suites_canonical_request_for_get_vanilla() -> None:
    text, signed = canonical_request(
        "GET", "/", "", {"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"},
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert signed == "host;x-amz-date"
    assert text == ("GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
                    "host;x-amz-date\n"
                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_a_bedrock_model_path_is_signed_double_encoded() -> None:
    """A model id's ':' goes on the wire as %3A and is signed as %253A (botocore's way); the
    fake Bedrock's own verifier agrees with the signature."""
    url = ("https://bedrock-runtime.us-east-1.amazonaws.com/model/"
           "anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse")
    text, _ = canonical_request("POST", "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/"
                                "converse", "", {"host": "h"}, "x")
    assert text.splitlines()[1] == ("/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/"
                                    "converse")
    signer = Signer(SUITE_KEY, SUITE_SECRET, "us-east-1", "bedrock", now=lambda: SUITE_TIME)
    body = b'{"messages":[]}'
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "User-Agent": "failoverd"}
    added = signer.sign("POST", url, headers, body)
    assert "SignedHeaders=accept;content-type;host;x-amz-date," in added["Authorization"]
    signature = added["Authorization"].rsplit("Signature=", 1)[1]
    received = {"accept": "application/json", "content-type": "application/json",
                "host": "bedrock-runtime.us-east-1.amazonaws.com",
                "x-amz-date": added["X-Amz-Date"]}
    assert signature == expected_signature(
        "POST", "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse", "", received,
        body, ["accept", "content-type", "host", "x-amz-date"], added["X-Amz-Date"],
        "us-east-1", SUITE_SECRET)


def test_the_clock_decides_the_date_and_so_the_signature() -> None:
    url = "https://example.amazonaws.com/"
    later = Signer(SUITE_KEY, SUITE_SECRET, "us-east-1", "service",
                   now=lambda: SUITE_TIME + 86400)
    added = later.sign("GET", url, {}, None)
    assert added["X-Amz-Date"] == "20150831T123600Z"
    assert "Credential=AKIDEXAMPLE/20150831/us-east-1/service/aws4_request" in \
        added["Authorization"]
    assert added["Authorization"] != suite_signer().sign("GET", url, {}, None)["Authorization"]


def test_the_port_of_a_host_is_signed_and_secrets_stay_out_of_repr() -> None:
    signer = suite_signer(SUITE_TOKEN)
    a = signer.sign("GET", "http://127.0.0.1:8080/", {}, None)["Authorization"]
    b = signer.sign("GET", "http://127.0.0.1:8080/", {}, None, host="127.0.0.1")["Authorization"]
    assert a != b
    assert SUITE_SECRET not in repr(signer) and SUITE_TOKEN not in repr(signer)
