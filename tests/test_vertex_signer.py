"""The pure-Python RS256 signer (rsasign.py) against openssl: PKCS#1 v1.5 signatures are
deterministic, so failoverd's must be openssl's byte for byte, for keys openssl made, in
PKCS#8 and PKCS#1 form; and the service-account JWT it signs verifies with openssl."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from failoverd.googlecreds import ServiceAccount, read_file
from failoverd.googletoken import assertion
from failoverd.rsasign import RsaKeyError, load_pem, sign_rs256
from tests.fakes.vertex import CLIENT_EMAIL, ServiceKey, make_key, rsa_key

__all__ = ["rsa_key"]  # the fixture

MESSAGES = [b"", b"hello", b"x" * 100_000, bytes(range(256)),
            b"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJhQGIuYyJ9"]


def openssl(*args: str, data: bytes = b"") -> bytes:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("needs the openssl CLI")
    return subprocess.run([path, *args], input=data, check=True, capture_output=True,
                          timeout=60).stdout


def openssl_sign(key: Path, message: bytes) -> bytes:
    return openssl("dgst", "-sha256", "-sign", str(key), data=message)


@pytest.mark.parametrize("form", ["pkcs8", "pkcs1"])
def test_signatures_are_openssls(rsa_key: ServiceKey, tmp_path: Path, form: str) -> None:
    path = rsa_key.path
    if form == "pkcs1":
        path = tmp_path / "pkcs1.pem"
        openssl("rsa", "-in", str(rsa_key.path), "-traditional", "-out", str(path))
        assert path.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    else:
        assert rsa_key.pem.startswith("-----BEGIN PRIVATE KEY-----")
    key = load_pem(path.read_text())
    assert key.n == rsa_key.modulus and key.size == 256
    for message in MESSAGES:
        assert sign_rs256(key, message) == openssl_sign(path, message)


def test_other_key_sizes(tmp_path: Path) -> None:
    for bits in (1024, 3072):
        made = make_key(tmp_path, bits=bits)
        key = load_pem(made.pem)
        assert key.size * 8 == bits
        assert sign_rs256(key, b"hello") == openssl_sign(made.path, b"hello")


def test_the_service_account_jwt_verifies_with_openssl(rsa_key: ServiceKey,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "sa.json"
    path.write_bytes(orjson.dumps(rsa_key.account("https://oauth2.googleapis.com/token")))
    account = read_file(str(path))
    assert isinstance(account, ServiceAccount)
    jwt = assertion(account, 1_700_000_000.5)
    head, claims, signature = jwt.split(".")
    pad = "=="
    assert orjson.loads(base64.urlsafe_b64decode(head + pad)) == {
        "alg": "RS256", "typ": "JWT", "kid": "0123456789abcdef0123456789abcdef01234567"}
    assert orjson.loads(base64.urlsafe_b64decode(claims + pad)) == {
        "iss": CLIENT_EMAIL, "scope": "https://www.googleapis.com/auth/cloud-platform",
        "aud": "https://oauth2.googleapis.com/token", "iat": 1_700_000_000,
        "exp": 1_700_003_600}
    public = tmp_path / "pub.pem"
    openssl("pkey", "-in", str(rsa_key.path), "-pubout", "-out", str(public))
    sig = tmp_path / "sig"
    sig.write_bytes(base64.urlsafe_b64decode(signature + pad))
    verified = openssl("dgst", "-sha256", "-verify", str(public), "-signature", str(sig),
                       data=f"{head}.{claims}".encode())
    assert b"Verified OK" in verified


def test_keys_it_cannot_use_are_refused_clearly(rsa_key: ServiceKey, tmp_path: Path) -> None:
    ec = tmp_path / "ec.pem"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
            str(ec))
    encrypted = openssl("pkcs8", "-topk8", "-in", str(rsa_key.path), "-v2", "aes256",
                        "-passout", "pass:secret").decode()
    body = "".join(rsa_key.pem.splitlines()[1:-1])
    cases = {
        ec.read_text(): "not an RSA key",
        encrypted: "encrypted",
        "no key here": "no -----BEGIN PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n": "not valid base64",
        # cut in half: the DER runs past its end
        f"-----BEGIN PRIVATE KEY-----\n{body[:len(body) // 2 // 4 * 4]}\n"
        "-----END PRIVATE KEY-----\n": "past the end",
        "-----BEGIN PRIVATE KEY-----\nMIIE\n": "no -----END PRIVATE KEY----- line",
    }
    for text, words in cases.items():
        with pytest.raises(RsaKeyError) as caught:
            load_pem(text)
        assert words in str(caught.value), (words, str(caught.value))
        assert body[10:40] not in str(caught.value)  # never key material
    key = load_pem(rsa_key.pem)
    assert str(key.d) not in repr(key) and "d=" not in repr(key)
