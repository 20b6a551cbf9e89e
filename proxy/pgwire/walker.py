# cython: language_level=3, boundscheck=False, wraparound=False, annotation_typing=False
"""The one frame walker: every pgwire reader and filter finds message boundaries here. Bounded; no I/O.

Cython compiles this same file (C types in walker.pxd; `pip install -e .` builds it); without a build it
runs as plain Python, with the same behaviour. A header is a type byte and an int32 length that counts
itself but not the type byte.
"""

from __future__ import annotations

from proxy.pgwire.errors import MessageTooLarge, ProtocolViolation
from proxy.pgwire.message_types import describe_type

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CONTINUED = -1  # piece type: more bytes of the pass-through message the previous chunk began


def frame_length(buf: bytes | bytearray, pos: int, max_message_bytes: int, whose: str) -> int:
    """The int32 length field of the header at `pos`, checked against the limit; -1 if fewer than 5 bytes."""
    if len(buf) - pos < 5:
        return -1
    length = buf[pos + 1]
    length = (length << 24) | (buf[pos + 2] << 16) | (buf[pos + 3] << 8) | buf[pos + 4]
    if length < 4 or length - 4 > max_message_bytes:
        raise_bad_length(buf[pos], length, max_message_bytes, whose)
    return length


def raise_bad_length(type_byte: int, length: int, max_message_bytes: int, whose: str) -> None:
    """Raise the error for a header whose (unsigned) length is below 4 or over the limit."""
    if length >= 0x80000000:
        length -= 0x100000000  # the field is a signed int32
    what = describe_type(type_byte, is_frontend=whose == "client")
    if length < 4:
        raise ProtocolViolation(f"invalid length {length} in message type {what}", whose=whose)
    raise MessageTooLarge(
        f"message type {what} of {length - 4} bytes exceeds the limit of {max_message_bytes} bytes", whose=whose
    )


def _hold_table(hold: frozenset[int]) -> bytes:
    return bytes(1 if i in hold else 0 for i in range(256))


class FrameWalker:
    """Walk the message headers of one direction of a stream, chunk by chunk.

    Messages of the `hold` types are buffered until complete and handed out whole; every other message
    passes by arithmetic, its body never copied. The walker carries a header split across chunks, the
    rest of a pass-through message, and a held message still arriving; it refuses lengths below 4 or
    over `max_message_bytes` with ProtocolViolation.
    """

    def __init__(self, hold: frozenset[int], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 whose: str = "client") -> None:
        self._hold = hold
        self._table = _hold_table(hold)
        self._max = max_message_bytes
        self._whose = whose
        self._skip = 0  # bytes still to come of a pass-through message already begun
        self._partial = bytearray()  # a split header (< 5 bytes) or a held message, not yet handed out
        self.last_buf = b""  # the last chunk walked, after any split header was joined to it
        self.last_stop = 0  # where the bytes of last_buf held back inside the walker begin

    @property
    def hold(self) -> frozenset[int]:
        return self._hold

    @hold.setter
    def hold(self, hold: frozenset[int]) -> None:
        """Callers may swap the held types between chunks (a reload, a denial awaiting its reply)."""
        if hold is not self._hold:
            self._hold = hold
            self._table = _hold_table(hold)

    @property
    def is_at_boundary(self) -> bool:
        """The stream so far ends exactly between messages."""
        return self._skip == 0 and len(self._partial) == 0

    @property
    def is_holding_message(self) -> bool:
        """A held message begun in an earlier chunk is still arriving (more than its header is buffered)."""
        return len(self._partial) >= 5

    def reset(self) -> None:
        """Forget the rest of the last chunk (the caller keeps those bytes and walks them again later)."""
        self._skip = 0
        self._partial = bytearray()

    def scan(self, data: bytes) -> list[tuple[int, bytes]]:
        """(type, body) of every held message that completed in this chunk."""
        return self._walk(data, False, True)

    def split(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int, bytes | None]]]:
        """`walk(data, is_every=True)` without the stop position."""
        pieces = self._walk(data, True, False)
        return self.last_buf, pieces

    def walk(self, data: bytes, is_every: bool) -> tuple[bytes, list[tuple[int, int, int, bytes | None]], int]:
        """Walk one chunk: returns `(buf, pieces, stop)`.

        `buf` is the chunk, or a new bytes with a split header from the last chunk in front of it; the
        positions in pieces index it. `buf[stop:]` is held back inside the walker (a split header or an
        incomplete held message). A held message that completes here is `(type, start, end, raw)` with
        `raw` the whole message; one begun in an earlier chunk has `start == 0` and `end` where the chunk
        goes on, so `end - start < len(raw)`. With `is_every`, a pass-through message is `(type, start,
        end, None)`, cut at the chunk's end, and goes on in the next chunk as a piece of type CONTINUED.
        """
        pieces = self._walk(data, is_every, False)
        return self.last_buf, pieces, self.last_stop

    def _walk(self, data: bytes, is_every: bool, is_bodies: bool) -> list:  # type: ignore[type-arg]
        """The loop behind scan, split and walk; leaves `buf` and `stop` (see `walk`) in `last_buf`, `last_stop`."""
        buf = data if type(data) is bytes else bytes(data)
        pieces: list = []  # type: ignore[type-arg]
        pos = 0
        n = len(buf)
        if self._skip:
            take = self._skip if self._skip < n else n
            self._skip -= take
            if is_every:
                pieces.append((CONTINUED, 0, take, None))
            pos = take
        elif len(self._partial):
            if len(self._partial) < 5:  # a split header: a few bytes, joined to the chunk
                buf = bytes(self._partial) + buf
                n = len(buf)
                self._partial = bytearray()
            else:
                pos = self._continue_held(buf, pieces, is_bodies)
                if len(self._partial):
                    self.last_buf = buf
                    self.last_stop = 0  # the whole chunk went into the held message
                    return pieces
        table = self._table
        limit = self._max + 4
        while pos < n:
            if n - pos < 5:
                self._partial = bytearray(buf[pos:])
                break
            type_byte = buf[pos]
            length = buf[pos + 1]  # widened first: the shifts must not overflow a C int
            length = (length << 24) | (buf[pos + 2] << 16) | (buf[pos + 3] << 8) | buf[pos + 4]
            if length < 4 or length > limit:
                raise_bad_length(type_byte, length, self._max, self._whose)
            end = pos + 1 + length
            if table[type_byte]:
                if end > n:
                    self._partial = bytearray(buf[pos:])
                    break
                if is_bodies:
                    pieces.append((type_byte, buf[pos + 5 : end]))
                else:
                    pieces.append((type_byte, pos, end, buf[pos:end]))
            elif end > n:
                if is_every:
                    pieces.append((type_byte, pos, n, None))
                self._skip = end - n
                pos = n
                break
            elif is_every:
                pieces.append((type_byte, pos, end, None))
            pos = end
        self.last_buf = buf
        self.last_stop = pos
        return pieces

    def _continue_held(self, data: bytes, pieces: list, is_bodies: bool) -> int:  # type: ignore[type-arg]
        """Add to a held message begun in an earlier chunk; returns the bytes of `data` consumed."""
        partial = self._partial
        length = partial[1]
        length = (length << 24) | (partial[2] << 16) | (partial[3] << 8) | partial[4]
        want = length + 1 - len(partial)
        take = want if want < len(data) else len(data)
        partial += data[:take]
        if take == want:
            raw = bytes(partial)
            self._partial = bytearray()
            if is_bodies:
                pieces.append((raw[0], raw[5:]))
            else:
                pieces.append((raw[0], 0, take, raw))
        return take
