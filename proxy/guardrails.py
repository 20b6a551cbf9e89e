"""Guard rails: PostgreSQL settings pgwarden fixes on the upstream session, so the server enforces them itself.

A config's `postgres.guardRails` become ordinary startup parameters of the upstream login
(default_transaction_read_only=on, statement_timeout, lock_timeout, idle_in_transaction_session_timeout,
search_path). PostgreSQL has no "locked setting", so pgwarden keeps them in place:

- at connect, a client startup parameter or an `options` switch that would set a locked setting is refused
  (`startup_parameters`), and with any rail on, `options` may hold nothing but `-c name=value` switches;
- per query, the gate refuses SET / set_config / READ WRITE transaction modes that would change one
  (proxy/policy/railgate.py; this is why rails need authorization mode ALL);
- settings the server reports (GUC_REPORT: default_transaction_read_only in PostgreSQL 14+, search_path in
  18+) are watched by the session: a report of another value ends it, which catches a function that calls
  set_config() where the gate cannot see.

No I/O here; the session and upstream modules call these.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.errors import AccessDenied, PgwardenError
from proxy.pgwire.walker import CONTINUED, FrameWalker
from proxy.snapshot import GuardRails

MAX_DURATION_MS = 2**31 - 1  # PostgreSQL's timeouts are int milliseconds
_DURATION = re.compile(r"^([0-9]+)(ms|s|min|h)$")
_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}
MAX_SCHEMA_NAME_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer identifiers


class TooManyConnections(PgwardenError):
    """A guard rail's connection cap is reached (PostgreSQL's own SQLSTATE for too many connections)."""

    sqlstate = "53300"


def parse_duration_ms(text: str) -> int:
    """`500ms`, `30s`, `5min`, `1h` as milliseconds. Raises ValueError naming what is wrong (never the text)."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError("must be a whole number followed by ms, s, min or h (e.g. 500ms, 30s, 5min, 1h)")
    ms = int(found.group(1)) * _DURATION_UNITS_MS[found.group(2)]
    if not 1 <= ms <= MAX_DURATION_MS:
        raise ValueError(f"must be between 1ms and {MAX_DURATION_MS}ms (about 24 days)")
    return ms


def schema_name_problem(name: str) -> str | None:
    """Why `name` cannot be a searchPath entry, or None."""
    if not name:
        return "must not be empty"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        return "must not contain control characters"
    if len(name.encode("utf-8")) > MAX_SCHEMA_NAME_BYTES:
        return f"must be at most {MAX_SCHEMA_NAME_BYTES} bytes (PostgreSQL would truncate it)"
    return None


_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def quote_ident(name: str) -> str:
    """A name for an identifier list (search_path): quoted unless lower-case plain, so case and every other
    character survive PostgreSQL's SplitIdentifierString (which lower-cases unquoted names, ends them at
    whitespace or commas, and knows no keywords)."""
    return name if _PLAIN_NAME.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def search_path_value(names: tuple[str, ...]) -> str:
    return ", ".join(quote_ident(n) for n in names)


# --- which settings each rail locks ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Lock:
    """One locked setting: the rail (as the manifest names it) and how to tell a harmless value."""

    rail: str
    kind: str  # "bool" | "duration" | "list"
    value: bool | int | tuple[str, ...]


def locked_settings(rails: GuardRails) -> dict[str, Lock]:
    """Setting name (lower case) -> its Lock, for the rails that are on."""
    locks: dict[str, Lock] = {}
    if rails.read_only:
        locks["default_transaction_read_only"] = locks["transaction_read_only"] = Lock("readOnly", "bool", True)
    for setting, rail, value in (("statement_timeout", "statementTimeout", rails.statement_timeout_ms),
                                 ("lock_timeout", "lockTimeout", rails.lock_timeout_ms),
                                 ("idle_in_transaction_session_timeout", "idleInTransactionTimeout",
                                  rails.idle_in_transaction_timeout_ms)):
        if value is not None:
            locks[setting] = Lock(rail, "duration", value)
    if rails.search_path is not None:
        locks["search_path"] = Lock("searchPath", "list", rails.search_path)
    return locks


def upstream_settings(rails: GuardRails) -> dict[str, str]:
    """The startup parameters that put the rails in place upstream."""
    out: dict[str, str] = {}
    if rails.read_only:
        out["default_transaction_read_only"] = "on"
    for setting, value in (("statement_timeout", rails.statement_timeout_ms),
                           ("lock_timeout", rails.lock_timeout_ms),
                           ("idle_in_transaction_session_timeout", rails.idle_in_transaction_timeout_ms)):
        if value is not None:
            out[setting] = f"{value}ms"
    if rails.search_path is not None:
        out["search_path"] = search_path_value(rails.search_path)
    return out


def setting_name(name: str) -> str:
    """How PostgreSQL matches a setting name: case-insensitively; `options` turn '-' into '_' too."""
    return name.lower().replace("-", "_")


# --- connect time ---------------------------------------------------------------------------------

def split_options(options: str) -> list[str]:
    """PostgreSQL's pg_split_opts: split on whitespace; a backslash takes the next character literally."""
    words: list[str] = []
    i, n = 0, len(options)
    while i < n:
        while i < n and options[i].isspace():
            i += 1
        if i >= n:
            break
        word: list[str] = []
        while i < n and not options[i].isspace():
            if options[i] == "\\" and i + 1 < n:
                i += 1
            word.append(options[i])
            i += 1
        words.append("".join(word))
    return words


def options_settings(options: str) -> list[str] | None:
    """The setting names `options` sets with -c name=value / -cname=value / --name=value, in order;
    None when it holds anything else (another postmaster switch, a stray word, a switch without a value)."""
    names: list[str] = []
    words = split_options(options)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            assignment = words[i + 1]
            i += 2
        elif word.startswith("-c") and len(word) > 2:
            assignment, i = word[2:], i + 1
        elif word.startswith("--") and len(word) > 2:
            assignment, i = word[2:], i + 1
        else:
            return None
        name, eq, _ = assignment.partition("=")
        if not eq or not name:
            return None
        names.append(name)
    return names


def startup_parameters(forwarded: Mapping[str, str], rails: GuardRails, *, config: str) -> dict[str, str]:
    """The client's forwarded startup parameters with the rails' settings on top.

    Raises AccessDenied (42501) when the client tries to set a locked setting itself, directly or in
    `options`, or (with any rail on) puts anything but -c switches in `options`.
    """
    if not rails.locks_settings:
        return dict(forwarded)
    locks = locked_settings(rails)
    for key, value in forwarded.items():
        if key == "options":
            names = options_settings(value)
            if names is None:
                raise AccessDenied(
                    f'startup option switches other than -c name=value are refused by the guard rails of config '
                    f'"{config}"', hint="set ordinary settings with -c name=value, or after connecting")
            for name in names:
                _refuse_locked(locks, setting_name(name), f'startup option "-c {name}"', config)
        else:
            _refuse_locked(locks, setting_name(key), f'startup parameter "{key}"', config)
    return {**forwarded, **upstream_settings(rails)}


def _refuse_locked(locks: Mapping[str, Lock], name: str, what: str, config: str) -> None:
    lock = locks.get(name)
    if lock is not None:
        raise AccessDenied(f'{what} denied by guard rail "{lock.rail}" of config "{config}"',
                           hint="this setting is fixed by the service's configuration")


def rail_denied(what: str, rail: str, config: str) -> str:
    """The one wording of every guard-rail refusal (the gate's denials use it too)."""
    return f'{what} denied by guard rail "{rail}" of config "{config}"'


# --- values a client may set: the rail's own ----------------------------------------------------

_NUMBER_UNIT = re.compile(r"^\s*(0|[1-9][0-9]*)(\.[0-9]+)?\s*(us|ms|s|min|h|d)?\s*$")
_UNIT_MS = {None: 1.0, "us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}


def parse_bool(text: str) -> bool | None:
    """PostgreSQL's parse_bool: on/off, true/false, yes/no, 1/0 and unique prefixes; None if not a bool."""
    v = text.strip().lower()
    if not v:
        return None
    if v in ("on", "1") or "true".startswith(v) or "yes".startswith(v):
        return True
    if v in ("off", "of", "0") or "false".startswith(v) or "no".startswith(v):
        return False
    return None


def parse_setting_ms(text: str) -> int | None:
    """A plain decimal duration as PostgreSQL reads a millisecond setting; None for anything less plain."""
    found = _NUMBER_UNIT.match(text)
    if found is None:
        return None
    number = float(found.group(1) + (found.group(2) or ""))
    return int(math.floor(number * _UNIT_MS[found.group(3)] + 0.5))  # rint, as parse_int does


def split_identifiers(text: str) -> tuple[str, ...] | None:
    """PostgreSQL's SplitIdentifierString(text, ','): quoted names kept, others lower-cased; None if malformed."""
    names: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            j, chars = i + 1, []
            while True:
                if j >= n:
                    return None
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        chars.append('"')
                        j += 2
                        continue
                    break
                chars.append(text[j])
                j += 1
            name, i = "".join(chars), j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] != ",":
                j += 1
            name, i = text[i:j].lower(), j
        if not name:
            return None
        names.append(name)
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return tuple(names)
        if text[i] != ",":
            return None
        i += 1


def keeps_rail(lock: Lock, value: str | tuple[str, ...]) -> bool:
    """Whether setting the locked setting to `value` leaves it as the rail has it.

    `value` is a setting's text (set_config, or one SET argument) or, for SET with several arguments,
    the argument strings. Anything we cannot read exactly as PostgreSQL would counts as a change.
    """
    if lock.kind == "list":
        names = value if isinstance(value, tuple) else split_identifiers(value)
        return names == lock.value
    if isinstance(value, tuple):
        if len(value) != 1:
            return False
        value = value[0]
    if lock.kind == "bool":
        return parse_bool(value) is True
    return parse_setting_ms(value) == lock.value


# --- one transaction cycle in flight (readOnly) ----------------------------------------------------

_CYCLE_ENDS = frozenset(b"SQF")  # Sync, Query, FunctionCall: each is answered by one ReadyForQuery


class CycleSplitter:
    """Finds where each request cycle of a client stream ends (after a Sync, Query or FunctionCall).

    With the readOnly rail, the session forwards one cycle and holds the rest until the server's
    ReadyForQuery: a function may turn default_transaction_read_only off, and the server reports that
    (ParameterStatus) only before that ReadyForQuery. Without the hold, a write pipelined behind it would
    start a read-write transaction before the proxy saw the report. Frames with the one walker; never decodes.
    """

    __slots__ = ("_walker", "_type")

    def __init__(self) -> None:
        self._walker = FrameWalker(frozenset(), whose="client")
        self._type = 0  # the type of a message an earlier chunk began and did not finish

    def cycle_ends(self, data: bytes) -> list[int]:
        """The offset just after each cycle-ending message that completes in `data`, in order.

        Walks each byte once, whatever the caller later does with the cycles (a held megabyte of pipelined
        Syncs costs one walk, not one per cycle). Raises ProtocolViolation on a header the walker refuses
        (the gate would refuse it too).
        """
        walker = self._walker
        buf, pieces, _ = walker.walk(data, True)
        shift = len(buf) - len(data)  # a split header from the last chunk, joined in front of this one
        n, last = len(buf), len(pieces) - 1
        ends: list[int] = []
        for i, (type_byte, _start, end, _raw) in enumerate(pieces):
            if type_byte == CONTINUED:
                type_byte = self._type
            if i == last and end == n and not walker.is_at_boundary:
                self._type = type_byte  # goes on in the next chunk
            elif type_byte in _CYCLE_ENDS:
                ends.append(end - shift)
        return ends


TRANSACTION_END_KINDS = frozenset({"COMMIT", "PREPARE TRANSACTION"})
_AFTER_END_ALLOWED = frozenset(b"SHCDX")  # Sync, Flush, Close, Describe, Terminate: none starts a transaction
_TRACKED = frozenset(b"PBECQ")  # Parse, Bind, Execute, Close (bodies needed), Query (drops the unnamed ones)
_EXTENDED = frozenset(b"PBEDCH")  # messages of an extended-protocol batch (until Sync)
AFTER_COMMIT = "a request after COMMIT before Sync"
QUERY_IN_BATCH = "a simple Query or FunctionCall inside an extended-protocol batch (before its Sync)"


class TransactionEndWatch:
    """readOnly rail, extended protocol: no work may start a new transaction before the next Sync.

    In one batch (up to Sync) an Execute after a COMMIT runs in a new transaction, read-write if a statement
    before the COMMIT turned default_transaction_read_only off; the server reports that only at the batch's
    ReadyForQuery. So after such an Execute only Sync, Flush, Close and Describe may follow until Sync. A
    simple Query (or FunctionCall) inside a batch commits it too, and a server that had an error skips it
    (no ReadyForQuery: the one-cycle hold would wait forever); libpq's pipeline mode refuses to send one,
    so it is refused here. `violation` names what came instead. Tracks statement and portal names to know
    what an Execute runs; `is_end` tells, from a Parse's query bytes, whether it ends a transaction.
    """

    __slots__ = ("_is_end", "_walker", "_statements", "_portals", "_after_end", "_in_batch")

    def __init__(self, is_end: Callable[[bytes], bool]) -> None:
        self._is_end = is_end
        self._walker = FrameWalker(_TRACKED, whose="client")  # the tracked messages come whole, the rest framed
        self._statements: dict[bytes, bool] = {}  # prepared statement name -> it ends a transaction
        self._portals: dict[bytes, bool] = {}
        self._after_end = False  # an Execute of a COMMIT went upstream; no Sync since
        self._in_batch = False  # extended-protocol messages went upstream; no Sync since

    def violation(self, data: bytes | bytearray) -> str | None:
        """What in `data` (the next client bytes) breaks the rule, or None.

        A tracked message is judged when it is complete: the gate holds those until then, so none of it has
        run upstream. Raises ProtocolViolation on a header the walker refuses.
        """
        for type_byte, _start, _end, raw in self._walker.split(bytes(data))[1]:
            if type_byte == CONTINUED:
                continue
            if self._after_end and type_byte not in _AFTER_END_ALLOWED:
                return AFTER_COMMIT
            if self._in_batch and type_byte in b"QF":
                return QUERY_IN_BATCH
            self._in_batch = type_byte in _EXTENDED or (self._in_batch and type_byte != ord("S"))
            if raw is not None:
                self._message(type_byte, raw[5:])
            elif type_byte == ord("S"):
                self._message(type_byte, b"")
        return None

    def _message(self, type_byte: int, body: bytes) -> None:
        if type_byte == ord("S"):
            self._after_end = False
            self._portals.clear()  # portals end with their transaction
        elif type_byte == ord("Q"):
            self._statements.pop(b"", None)
            self._portals.pop(b"", None)
        elif type_byte == ord("P"):
            name, _, rest = body.partition(b"\x00")
            self._statements[name] = self._is_end(rest.partition(b"\x00")[0])
        elif type_byte == ord("B"):
            portal, _, rest = body.partition(b"\x00")
            self._portals[portal] = self._statements.get(rest.partition(b"\x00")[0], False)
        elif type_byte == ord("E"):
            if self._portals.get(body.partition(b"\x00")[0], False):
                self._after_end = True
        elif type_byte == ord("C") and body:
            names = self._statements if body[:1] == b"S" else self._portals
            names.pop(body[1:].partition(b"\x00")[0], None)
