"""Shamir t-of-m secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

SecAgg+ (Bell et al. 2020) shares two secrets of every box among its neighbours: the seed of
its self-mask b_i and the private half of its mask-agreement key. Any t shares rebuild a
secret; t - 1 shares say nothing about it (each is a point of a random degree t-1 polynomial
whose constant term is the secret). The field is the Mersenne prime 2^521 - 1, larger than
every 256-bit secret, so a secret is one field element; the polynomial's coefficients come
from the operating system's CSPRNG (`secrets`).

A share is (x, y) with x the holder's index in the round (1-based, never 0: f(0) is the
secret) and y serialised as 66 big-endian bytes.
"""

import secrets
from collections.abc import Mapping, Sequence

from appliance.privacy.secagg.errors import SecAggError

PRIME = (1 << 521) - 1
"""The Mersenne prime M521; secrets are < 2^256, so every one is a field element."""
SHARE_BYTES = 66
SECRET_BYTES = 32


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Shares of `secret` at the points `xs`, any `threshold` of which rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret has {SECRET_BYTES} bytes, not {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be between 1 and {len(xs)} holders")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and non-zero")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x).to_bytes(SHARE_BYTES, "big") for x in xs}


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least `threshold` shares (Lagrange interpolation at 0).

    Uses the first `threshold` shares by point; a wrong share gives a wrong secret, which the
    caller detects against its commitment (the secret's public key or hash)."""
    if len(shares) < threshold:
        raise SecAggError(
            "too_few_shares", f"{len(shares)} shares < threshold {threshold}: cannot rebuild"
        )
    points = sorted(shares)[:threshold]
    ys = {}
    for x in points:
        raw = shares[x]
        if len(raw) != SHARE_BYTES:
            raise SecAggError("malformed", f"share {x} has {len(raw)} bytes, not {SHARE_BYTES}")
        y = int.from_bytes(raw, "big")
        if y >= PRIME:
            raise SecAggError("malformed", f"share {x} is not a field element")
        ys[x] = y
    total = 0
    for x in points:
        numerator, denominator = 1, 1
        for other in points:
            if other != x:
                numerator = numerator * (-other) % PRIME
                denominator = denominator * (x - other) % PRIME
        total = (total + ys[x] * numerator * pow(denominator, -1, PRIME)) % PRIME
    if total >= 1 << (8 * SECRET_BYTES):
        raise SecAggError("share_mismatch", "the shares do not rebuild a 32-byte secret")
    return total.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """f(x) by Horner's rule, modulo the prime."""
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % PRIME
    return value
