"""Who is on the other end of a local connection: the uid that owns the client's socket.

Linux lists every TCP socket of the network namespace, with its owner's uid, in /proc/net/tcp and
/proc/net/tcp6. The client's socket of an accepted loopback connection is the row whose local address is our
peer's and whose remote address is ours. Elsewhere (no /proc) the owner cannot be told: `None`.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

PROC_NET = Path("/proc/net")
# TIME_WAIT rows belong to no process (uid 0) and LISTEN rows have no peer: neither is a live client socket.
_NOT_A_CLIENT = frozenset({"06", "0A"})


class OwnerUnknown(Exception):
    """The OS lists sockets but not this connection's client (it went away, or it is not local)."""


def _hex_address(family: int, host: str) -> str:
    """An address as /proc/net/tcp{,6} prints it: each 32-bit word as %08X of the word read in host order."""
    packed = socket.inet_pton(family, host)
    return "".join(f"{struct.unpack('=I', packed[i:i + 4])[0]:08X}" for i in range(0, len(packed), 4))


def _endpoint(family: int, address: tuple[object, ...]) -> str:
    return f"{_hex_address(family, str(address[0]))}:{int(address[1]):04X}"  # type: ignore[call-overload]


def peer_uid(sock: socket.socket, *, proc_net: Path = PROC_NET) -> int | None:
    """The uid owning the client end of this accepted connection; None where the OS cannot tell.

    A unix socket asks the kernel (SO_PEERCRED: the client's credentials when it connected). Loopback TCP
    reads /proc/net/tcp{,6}, and raises OwnerUnknown when that lists sockets but has no row for the client's.
    """
    family = sock.family
    if family == socket.AF_UNIX:
        if not hasattr(socket, "SO_PEERCRED"):
            return None
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
        return uid
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise OwnerUnknown(f"not a TCP socket (family {family!r})")
    table = proc_net / ("tcp" if family == socket.AF_INET else "tcp6")
    try:
        text = table.read_text()
    except OSError:
        return None  # no /proc (not Linux, or hidden): the owner cannot be told
    ours, theirs = _endpoint(family, sock.getsockname()), _endpoint(family, sock.getpeername())
    for line in text.splitlines()[1:]:
        fields = line.split()
        # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
        if len(fields) > 7 and fields[1] == theirs and fields[2] == ours and fields[3] not in _NOT_A_CLIENT:
            return int(fields[7])
    raise OwnerUnknown("the client's socket is not listed (it closed, or it is not on this host)")
