"""PostgreSQL rows of the identity state store back into their dataclasses (asyncpg decodes the types)."""

from __future__ import annotations

import json

import asyncpg

from identity.store.base import AssuranceLevel, AuthMethod, DeviceCode, IdentitySession, PasskeyCredential


def session_from_row(row: asyncpg.Record) -> IdentitySession:
    return IdentitySession(
        id=row["id"], user=row["user_name"], idp=row["idp"], method=AuthMethod(row["method"]),
        aal=AssuranceLevel(row["aal"]), created_at=row["created_at"], expires_at=row["expires_at"],
        last_seen_at=row["last_seen_at"], revoked_at=row["revoked_at"], user_agent=row["user_agent"],
        ip=row["ip"], attrs=json.loads(row["attrs"]),
    )


def passkey_from_row(row: asyncpg.Record) -> PasskeyCredential:
    return PasskeyCredential(
        credential_id=bytes(row["credential_id"]), user=row["user_name"], public_key=bytes(row["public_key"]),
        sign_count=row["sign_count"], transports=list(row["transports"]), created_at=row["created_at"],
        last_used_at=row["last_used_at"],
    )


def device_code_from_row(row: asyncpg.Record) -> DeviceCode:
    return DeviceCode(
        device_code_hash=row["device_code_hash"], user_code=row["user_code"], client=row["client"],
        expires_at=row["expires_at"], interval_s=row["interval_s"],
        approved_session_id=row["approved_session_id"], denied=row["denied"],
    )
