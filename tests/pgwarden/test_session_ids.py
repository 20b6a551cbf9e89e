"""Session ids are pasted into `pgwarden sessions revoke ID`; none may read as a command-line option."""

from __future__ import annotations

from identity.store.base import new_session_id
from pgwarden.__main__ import build_parser


def test_no_session_id_starts_with_a_dash() -> None:
    # One plain urlsafe id in 64 starts with '-'; 4,000 draws all missing it by chance is ~1e-27.
    ids = {new_session_id() for _ in range(4000)}
    assert len(ids) == 4000
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)  # still 128 bits


def test_every_new_session_id_is_a_revoke_argument() -> None:
    parser = build_parser("sessions")
    for _ in range(500):
        sid = new_session_id()
        assert parser.parse_args(["sessions", "revoke", sid]).session == sid


def test_an_older_dash_id_is_revoked_after_double_dash() -> None:
    args = build_parser("sessions").parse_args(["sessions", "revoke", "--", "-64oekk15mmHcbxfX7lQ"])
    assert args.session == "-64oekk15mmHcbxfX7lQ"
