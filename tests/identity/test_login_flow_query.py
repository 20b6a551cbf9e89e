"""What a /login URL may ask for: only loopback CLI redirects and local `next` paths (no open redirect)."""

from __future__ import annotations

import pytest

from identity.store.base import AssuranceLevel
from identity.web.login_flow import LoginRefused, flow_fields_from_query, is_loopback_redirect

CHALLENGE = "x" * 43


@pytest.mark.parametrize("nxt", ["//evil.example", "/\\evil.example", "https://evil.example/", "account",
                                 "/account\n", "/\\/evil.example"])
def test_next_must_stay_on_this_site(nxt: str) -> None:
    with pytest.raises(LoginRefused):
        flow_fields_from_query({"next": nxt})


def test_a_local_next_path_and_aal2_are_kept() -> None:
    assert flow_fields_from_query({"next": "/account?tab=passkeys", "aal": "aal2"}) == {
        "next": "/account?tab=passkeys", "want_aal": AssuranceLevel.AAL2}


@pytest.mark.parametrize("uri", ["http://127.0.0.1:8765/callback", "http://localhost:1/cb", "http://[::1]:9/"])
def test_loopback_redirects_are_accepted(uri: str) -> None:
    assert is_loopback_redirect(uri)
    assert flow_fields_from_query({"redirect_uri": uri, "code_challenge": CHALLENGE})["redirect_uri"] == uri


@pytest.mark.parametrize("uri", ["https://127.0.0.1:8765/cb", "http://127.0.0.1/cb", "http://evil.example:80/cb",
                                 "http://127.0.0.1:8765/cb?x=1", "http://10.0.0.1:8765/cb"])
def test_other_redirects_are_refused(uri: str) -> None:
    assert not is_loopback_redirect(uri)
    with pytest.raises(LoginRefused):
        flow_fields_from_query({"redirect_uri": uri, "code_challenge": CHALLENGE})


def test_a_cli_login_needs_an_s256_challenge() -> None:
    with pytest.raises(LoginRefused):
        flow_fields_from_query({"redirect_uri": "http://127.0.0.1:8765/cb"})
    with pytest.raises(LoginRefused):
        flow_fields_from_query({"redirect_uri": "http://127.0.0.1:8765/cb", "code_challenge": CHALLENGE,
                                 "code_challenge_method": "plain"})
