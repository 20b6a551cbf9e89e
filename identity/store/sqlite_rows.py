"""SQLite rows of the identity state store back into their dataclasses; times are stored as integer
microseconds since the epoch (exact, sortable, and all that datetime can hold)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from identity.store.base import (
    AssuranceLevel,
    AuthMethod,
    DeviceCode,
    IdentitySession,
    PasskeyCredential,
    require_aware,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def to_us(value: datetime) -> int:
    # Integer microseconds since the epoch: exact, sortable, and all that datetime can hold.
    return (require_aware(value, "time") - _EPOCH) // _ONE_US


def from_us(value: int) -> datetime:
    return _EPOCH + value * _ONE_US


def from_us_or_none(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def session_from_row(row: tuple[Any, ...]) -> IdentitySession:
    return IdentitySession(
        id=row[0], user=row[1], idp=row[2], method=AuthMethod(row[3]), aal=AssuranceLevel(row[4]),
        created_at=from_us(row[5]), expires_at=from_us(row[6]), last_seen_at=from_us(row[7]),
        revoked_at=from_us_or_none(row[8]), user_agent=row[9], ip=row[10], attrs=json.loads(row[11]),
    )


def passkey_from_row(row: tuple[Any, ...]) -> PasskeyCredential:
    return PasskeyCredential(
        credential_id=row[0], user=row[1], public_key=row[2], sign_count=row[3], transports=json.loads(row[4]),
        created_at=from_us(row[5]), last_used_at=from_us_or_none(row[6]),
    )


def device_code_from_row(row: tuple[Any, ...]) -> DeviceCode:
    return DeviceCode(device_code_hash=row[0], user_code=row[1], client=row[2], expires_at=from_us(row[3]),
                      interval_s=row[4], approved_session_id=row[5], denied=bool(row[6]))
