"""Login flows travel between replicas through the state store as JSON that can only build allow-listed types."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from identity.providers.oidc.flows import AuthorizationRequest
from identity.providers.oidc.login import OidcLogin
from identity.store.base import AssuranceLevel, AuthMethod
from identity.web.login_flow import LoginFlow, LoginResult


def a_flow() -> LoginFlow:
    flow = LoginFlow(id="f1", created=1_800_000_000.5, redirect_uri="http://127.0.0.1:5000/cb", state="s",
                     code_challenge="c" * 43, want_aal=AssuranceLevel.AAL2, ttl_s=3600,
                     pending=LoginResult(user="alice", idp="corp", method=AuthMethod.OIDC,
                                         claims={"email": "a@example.com", "groups": ["x", "y"], "n": 3}))
    flow.data.update(passkey_challenge=b"\x00\xffchallenge", totp_failures=2,
                     github={"idp": "gh", "nonce": "n"},
                     authorization=AuthorizationRequest(url="https://idp/authorize", state="st", nonce="no",
                                                        code_verifier="v" * 48, redirect_uri="http://localhost/cb",
                                                        provider="corp", issuer="https://idp", has_iss_parameter=True))
    return flow


def test_a_flow_comes_back_as_it_went() -> None:
    flow = a_flow()
    back = LoginFlow.decode(flow.encode())
    assert back == flow
    assert back.want_aal is AssuranceLevel.AAL2 and back.pending is not None and back.pending.method is AuthMethod.OIDC
    assert isinstance(back.data["passkey_challenge"], bytes) and isinstance(back.data["authorization"],
                                                                            AuthorizationRequest)
    assert OidcLogin.type_name == "oidc"  # the provider module registered its pending-request type on import


@pytest.mark.parametrize("tag", ["os.system", "subprocess.Popen", "builtins.eval", "identity.web.login_flow.Nope"])
def test_a_stored_flow_cannot_name_another_type(tag: str) -> None:
    forged = {"$type": tag, "fields": {"args": ["touch", "/tmp/pgwarden-pwned"]}}
    with pytest.raises(ValueError, match="may not travel"):
        LoginFlow.decode(json.dumps(forged).encode())
    with pytest.raises(ValueError, match="may not travel"):
        LoginFlow.decode(json.dumps({"$enum": tag, "value": 1}).encode())


def test_something_else_than_a_flow_is_refused() -> None:
    result = LoginResult(user="alice", idp="corp", method=AuthMethod.OIDC)
    data = json.dumps({"$type": "identity.web.login_flow.LoginResult",
                       "fields": {"user": "alice", "idp": "corp", "method": {"$enum": "identity.store.base.AuthMethod",
                                                                             "value": result.method.value}}})
    with pytest.raises(ValueError, match="not a login flow"):
        LoginFlow.decode(data.encode())


def test_an_unregistered_type_does_not_go_into_the_store() -> None:
    @dataclass
    class Stray:
        x: int

    flow = a_flow()
    flow.data["stray"] = Stray(1)
    with pytest.raises(TypeError, match="may not travel in a login flow"):
        flow.encode()
