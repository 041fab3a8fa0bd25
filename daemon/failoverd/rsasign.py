"""RSA signatures for the JWTs of Google service accounts (RS256: RSASSA-PKCS1-v1_5 with
SHA-256, RFC 8017 section 8.2), in pure Python: the `cryptography` package is no dependency.

Only what a service-account key file holds is read: a PEM ``PRIVATE KEY`` (PKCS#8, RFC 5208,
unencrypted, algorithm rsaEncryption) or ``RSA PRIVATE KEY`` (PKCS#1), by a DER reader that
knows SEQUENCE, INTEGER, OCTET STRING, OBJECT IDENTIFIER and NULL. Signing uses the CRT
parameters, with the message blinded by a random factor, so the time a signature takes says
nothing of the key (Python's `pow` is not constant-time); PKCS#1 v1.5 signatures are
deterministic all the same. Nothing here logs, and no error text holds key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass, field

__all__ = ["RsaKeyError", "RsaKey", "load_pem", "sign_rs256"]

# DigestInfo's DER prefix for SHA-256 (RFC 8017 section 9.2, note 1)
_SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")
_RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")  # OID 1.2.840.113549.1.1.1
_SEQUENCE, _INTEGER, _OCTET_STRING, _NULL, _OID = 0x30, 0x02, 0x04, 0x05, 0x06
MIN_BITS = 1024  # Google issues 2048-bit keys; anything much smaller is no key of theirs
MAX_BITS = 8192


class RsaKeyError(ValueError):
    """The text is no usable RSA private key; the message says why (never with key bytes)."""


@dataclass(frozen=True, slots=True)
class RsaKey:
    """An RSA private key: the modulus, the public exponent and the CRT parameters."""

    n: int = field(repr=False)
    e: int = field(repr=False)
    d: int = field(repr=False)
    p: int = field(repr=False)
    q: int = field(repr=False)
    dp: int = field(repr=False)
    dq: int = field(repr=False)
    qinv: int = field(repr=False)

    @property
    def size(self) -> int:
        """The modulus's length in bytes (the signature's)."""
        return (self.n.bit_length() + 7) // 8


class _Der:
    """A cursor over DER bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)

    def read(self, tag: int) -> bytes:
        data, pos = self.data, self.pos
        if pos + 2 > len(data) or data[pos] != tag:
            raise RsaKeyError(f"expected DER tag 0x{tag:02x} at byte {pos}")
        length = data[pos + 1]
        pos += 2
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 4 or pos + count > len(data):
                raise RsaKeyError(f"bad DER length at byte {pos - 1}")
            length = int.from_bytes(data[pos:pos + count], "big")
            pos += count
        if pos + length > len(data):
            raise RsaKeyError(f"DER value at byte {pos} runs past the end")
        self.pos = pos + length
        return data[pos:pos + length]

    def integer(self) -> int:
        raw = self.read(_INTEGER)
        if not raw or raw[0] & 0x80:
            raise RsaKeyError("a key parameter is empty or negative")
        return int.from_bytes(raw, "big")


def _pkcs1(der: bytes) -> RsaKey:
    """RSAPrivateKey ::= SEQUENCE { version, n, e, d, p, q, dp, dq, qinv } (RFC 8017 A.1.2)."""
    seq = _Der(_Der(der).read(_SEQUENCE))
    version = seq.integer()
    if version != 0:
        raise RsaKeyError("a multi-prime RSA key (version 1) is not supported")
    n, e, d, p, q, dp, dq, qinv = (seq.integer() for _ in range(8))
    if not MIN_BITS <= n.bit_length() <= MAX_BITS:
        raise RsaKeyError(f"an RSA key of {n.bit_length()} bits; {MIN_BITS} to {MAX_BITS} "
                        "are taken")
    # what signing uses must be right (openssl's RSA_check_key refuses such a key too): a
    # damaged dp, dq or qinv would make every signature wrong, found only at the first grant
    # and each within its range (RFC 8017 3.2), which also bounds the work of a signature: a
    # 64 KiB file could hold an exponent that makes every one take seconds on the event loop
    if p * q != n or not 3 <= e < n or min(p, q) < 3 or not 0 < qinv < p \
            or not 0 < dp < p or not 0 < dq < q or qinv * q % p != 1 \
            or e * dp % (p - 1) != 1 or e * dq % (q - 1) != 1:
        raise RsaKeyError("the RSA key's parameters do not fit together")
    key = RsaKey(n, e, d, p, q, dp, dq, qinv)
    sign_rs256(key, b"failoverd")  # p and q no primes: the signature does not verify
    return key


def _pkcs8(der: bytes) -> RsaKey:
    """PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, OCTET STRING } (RFC 5208)."""
    seq = _Der(_Der(der).read(_SEQUENCE))
    seq.integer()  # 0, or 1 for OneAsymmetricKey (RFC 5958): the same fields first
    algorithm = _Der(seq.read(_SEQUENCE))
    if algorithm.read(_OID) != _RSA_ENCRYPTION:
        raise RsaKeyError("not an RSA key (a service-account key is RSA)")
    if not algorithm.done:
        algorithm.read(_NULL)
    return _pkcs1(seq.read(_OCTET_STRING))


def load_pem(text: str) -> RsaKey:
    """The RSA key of a PEM text: ``-----BEGIN PRIVATE KEY-----`` (PKCS#8) or ``-----BEGIN RSA
    PRIVATE KEY-----`` (PKCS#1). An encrypted key is refused."""
    for label, parse in (("PRIVATE KEY", _pkcs8), ("RSA PRIVATE KEY", _pkcs1)):
        begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
        start = text.find(begin)
        if start < 0:
            continue
        stop = text.find(end, start)
        if stop < 0:
            raise RsaKeyError(f"the PEM block has no {end} line")
        body = text[start + len(begin):stop]
        if "Proc-Type" in body or ":" in body:
            raise RsaKeyError("an encrypted PEM key is not supported")
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise RsaKeyError("the PEM block is not valid base64") from None
        return parse(der)
    if "ENCRYPTED PRIVATE KEY" in text:
        raise RsaKeyError("an encrypted PEM key is not supported")
    raise RsaKeyError("no -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY----- block")


def sign_rs256(key: RsaKey, message: bytes) -> bytes:
    """The RSASSA-PKCS1-v1_5 signature of SHA-256(`message`) (EMSA-PKCS1-v1_5 encoding)."""
    k = key.size
    digest_info = _SHA256_PREFIX + hashlib.sha256(message).digest()
    if k < len(digest_info) + 11:
        raise RsaKeyError("the RSA key is too short for a SHA-256 signature")
    encoded = b"\x00\x01" + b"\xff" * (k - len(digest_info) - 3) + b"\x00" + digest_info
    m = int.from_bytes(encoded, "big")
    n = key.n
    # blinding: sign m * r^e and divide by r, so the work depends on nothing an observer knows
    while True:
        r = secrets.randbelow(n - 2) + 2
        try:
            r_inv = pow(r, -1, n)
        except ValueError:  # pragma: no cover - r shares a factor with n: never in practice
            continue
        break
    blinded = m * pow(r, key.e, n) % n
    m1 = pow(blinded, key.dp, key.p)
    m2 = pow(blinded, key.dq, key.q)
    h = key.qinv * (m1 - m2) % key.p
    s = (m2 + h * key.q) * r_inv % n
    if pow(s, key.e, n) != m:  # a fault (a wrong CRT parameter) must not leak the key
        raise RsaKeyError("the RSA key's parameters do not fit together")
    return s.to_bytes(k, "big")
