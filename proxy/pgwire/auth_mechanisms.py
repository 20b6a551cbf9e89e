"""The upstream login mechanisms a config may allow (`postgres.auth.mechanisms`)."""

from __future__ import annotations

from enum import StrEnum


class AuthMechanism(StrEnum):
    """How pgwarden may log in upstream (`postgres.auth.mechanisms`).

    SCRAM_SHA_256 (and -PLUS) never shows the password and its final message proves the server knows it.
    The others prove nothing about the server, so a config may name them only with sslMode VERIFY_CA or
    VERIFY_FULL: MD5 and PASSWORD hand a replayable hash or the password itself to whoever answers, and
    TRUST accepts a server that lets us in without asking for the password we hold.
    """

    SCRAM_SHA_256 = "SCRAM_SHA_256"
    MD5 = "MD5"
    PASSWORD = "PASSWORD"
    TRUST = "TRUST"

    @property
    def needs_verified_tls(self) -> bool:
        return self is not AuthMechanism.SCRAM_SHA_256


DEFAULT_AUTH_MECHANISMS = (AuthMechanism.SCRAM_SHA_256,)
