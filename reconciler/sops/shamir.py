"""Shamir secret sharing over GF(2^8), share layout as getsops/sops `shamir/shamir.go`.

A share is `y[0..n-1] || x`: one polynomial per secret byte, the x coordinate stored once at the end.
"""

from __future__ import annotations

import secrets

from reconciler.sops.errors import SopsError


def _mult(a: int, b: int) -> int:
    # Carry-less multiply reduced by the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B).
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return product


def _inverse(a: int) -> int:
    # a^254 == a^-1 in GF(2^8) (the multiplicative group has order 255).
    result, power, exponent = 1, a, 254
    while exponent:
        if exponent & 1:
            result = _mult(result, power)
        power = _mult(power, power)
        exponent >>= 1
    return result


def combine(shares: list[bytes]) -> bytes:
    """Lagrange interpolation at x = 0 over every byte position."""
    if len(shares) < 2:
        raise SopsError("Shamir needs at least two shares to rebuild the data key")
    length = len(shares[0])
    if length < 2 or any(len(share) != length for share in shares):
        raise SopsError("Shamir shares have different or too short lengths")
    xs = [share[-1] for share in shares]
    if len(set(xs)) != len(xs) or 0 in xs:
        raise SopsError("Shamir shares repeat an x coordinate")
    basis = []
    for i, xi in enumerate(xs):
        weight = 1
        for j, xj in enumerate(xs):
            if i != j:
                weight = _mult(weight, _mult(xj, _inverse(xi ^ xj)))
        basis.append(weight)
    secret = bytearray(length - 1)
    for position in range(length - 1):
        value = 0
        for share, weight in zip(shares, basis, strict=True):
            value ^= _mult(share[position], weight)
        secret[position] = value
    return bytes(secret)


def split(secret: bytes, parts: int, threshold: int) -> list[bytes]:
    """Split `secret` into `parts` shares, any `threshold` of which rebuild it."""
    if not 2 <= threshold <= parts <= 255 or not secret:
        raise SopsError("Shamir needs 2 <= threshold <= parts <= 255 and a non-empty secret")
    # Random distinct x coordinates, as Go sops does (mathrand.Perm(255) + 1).
    xs = secrets.SystemRandom().sample(range(1, 256), parts)
    shares = [bytearray(len(secret) + 1) for _ in range(parts)]
    for share, x in zip(shares, xs, strict=True):
        share[-1] = x
    for position, byte in enumerate(secret):
        coefficients = [byte, *secrets.token_bytes(threshold - 1)]
        for share, x in zip(shares, xs, strict=True):
            y = 0
            for coefficient in reversed(coefficients):  # Horner's method
                y = _mult(y, x) ^ coefficient
            share[position] = y
    return [bytes(share) for share in shares]
