"""CEL over a workload token's claims picks the WORKLOAD User: identities first, then rules in order."""

from __future__ import annotations

from typing import Any

import pytest

from identity.errors import IdentityError
from identity.workload_mapping import compile_claims_expression, map_workload_user
from proxy.policy.cel import CelCompileError
from proxy.snapshot import IdentityProvider, User, UserType

CLAIMS = {"sub": "repo:acme/api:ref:refs/heads/main", "repository": "acme/api", "ref": "refs/heads/main",
          "repository_owner": "acme", "ref_type": "branch"}


def provider(*rules: tuple[str, dict[str, Any]]) -> IdentityProvider:
    users = [{"user": user, "condition": condition} for user, condition in rules]
    return IdentityProvider(name="gha", type="oidcIdentityToken", manifest={
        "metadata": {"name": "gha"},
        "spec": {"oidcIdentityToken": {"issuerURL": "https://issuer.example", "audience": "pgwarden", "users": users}},
    })


USERS = {
    "ci-bot": User(name="ci-bot", type=UserType.WORKLOAD),
    "deploy-bot": User(name="deploy-bot", type=UserType.WORKLOAD),
    "pinned-bot": User(name="pinned-bot", type=UserType.WORKLOAD, manifest={"spec": {"authentication": {
        "identities": [{"identityProvider": "gha", "identifier": "repo:acme/api:ref:refs/heads/main"}]}}}),
}


def test_first_matching_rule_wins() -> None:
    idp = provider(("deploy-bot", {"match": 'claims.repository == "acme/web"'}),
                   ("ci-bot", {"match": 'claims.repository == "acme/api" && claims.ref == "refs/heads/main"'}),
                   ("deploy-bot", {"matchAny": True}))
    users = {k: v for k, v in USERS.items() if k != "pinned-bot"}
    assert map_workload_user(idp, CLAIMS, users) == "ci-bot"
    assert map_workload_user(idp, {**CLAIMS, "ref": "refs/heads/dev"}, users) == "deploy-bot"


def test_an_exact_identity_beats_any_rule() -> None:
    idp = provider(("ci-bot", {"matchAny": True}))
    assert map_workload_user(idp, CLAIMS, USERS) == "pinned-bot"


def test_condition_trees_and_ctx_claims_work() -> None:
    idp = provider(("ci-bot", {"all": {"of": [{"match": 'ctx.claims.repository_owner == "acme"'},
                                              {"not": 'claims.ref_type == "tag"'}]}}))
    users = {"ci-bot": USERS["ci-bot"]}
    assert map_workload_user(idp, CLAIMS, users) == "ci-bot"
    assert map_workload_user(idp, {**CLAIMS, "ref_type": "tag"}, users) is None


def test_a_missing_claim_is_no_match_and_a_type_error_fails_closed() -> None:
    users = {"ci-bot": USERS["ci-bot"]}
    assert map_workload_user(provider(("ci-bot", {"match": 'claims.environment == "prod"'})), CLAIMS, users) is None
    with pytest.raises(IdentityError, match="spec.oidcIdentityToken.users condition failed"):
        map_workload_user(provider(("ci-bot", {"match": "claims.repository > 3"})), CLAIMS, users)


def test_expressions_compile_once_and_refuse_unknown_names() -> None:
    text = 'claims.repository == "acme/once"'
    assert compile_claims_expression(text) is compile_claims_expression(text)
    with pytest.raises(CelCompileError, match="undeclared reference to 'request'"):
        compile_claims_expression('request.repository == "x"')
    with pytest.raises(CelCompileError, match="unexpected end of expression"):
        compile_claims_expression("claims.repository ==")
