"""`pgwarden validate` refuses CEL that would stall the proxy, naming the file and the path of the rule."""

from __future__ import annotations

from pathlib import Path

from tests.reconciler.test_validate_cli import pgwarden, write

TEN = "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
TWENTY = "[" + ", ".join(str(i) for i in range(20)) + "]"


def nested_all(depth: int, over: str) -> str:
    body = " + ".join(f"v{i}" for i in range(depth)) + " > 0"
    for i in reversed(range(depth)):
        body = f"{over}.all(v{i}, {body})"
    return body


# Before the fix, evaluating this took seconds at every connection (celpy has no short circuit in all()),
# and validate accepted it.
SLOW_ROUTING = nested_all(5, TEN)
SLOW_POLICY = nested_all(3, TWENTY)  # within the nesting limit, 8,000 body evaluations: over the budget

SERVICE = f"""\
kind: Service
metadata: {{name: my-db}}
spec:
  config:
    upstream: {{url: postgres://my-pg:5432}}
    postgres: {{user: app}}
  dynamicConfig:
    configs:
      - {{name: admin, parent: default, postgres: {{user: admin}}}}
    rules:
      - condition: {{matchAny: true}}
        configName: admin
      - condition: {{match: '{SLOW_ROUTING}'}}
        configName: admin
"""
POLICY = f"""\
kind: Policy
metadata: {{name: heavy}}
spec:
  attrs: {{protected: [{", ".join(f"t{i}" for i in range(400))}]}}
  rules:
    - name: ok
      effect: ALLOW
      condition: {{matchAny: true}}
    - name: big-attrs
      effect: DENY
      condition: {{match: 'ctx.request.postgres.statement.tables.exists(t, attrs.protected.exists(p, t == p))'}}
    - name: slow
      effect: DENY
      condition:
        any:
          of:
            - {{match: 'ctx.request.postgres.statement.readOnly'}}
            - {{match: '{SLOW_POLICY}'}}
"""
PROVIDER = f"""\
kind: IdentityProvider
metadata: {{name: corp}}
spec:
  oidc: {{issuerURL: "https://sso.example.com", clientID: pgwarden, clientSecret: {{fromSecret: corp-oidc}}}}
  aalRules:
    - condition: {{match: '{nested_all(4, TEN).replace("> 0", "> size(ctx.claims.amr)")}'}}
      aal: AAL2
---
kind: Secret
metadata: {{name: corp-oidc}}
data: {{value: "oidc-client-secret-value"}}
"""


def test_validate_names_file_and_path_of_each_over_budget_rule(tmp_path: Path) -> None:
    assert len(SLOW_ROUTING) > 200  # the reported rule was 284 characters
    write(tmp_path / "m", {"services/db.yaml": SERVICE, "policies/heavy.yaml": POLICY,
                              "idp.yaml": PROVIDER})
    result = pgwarden("validate", "m", "--allow-plaintext-secrets", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "services/db.yaml, document 1, spec.dynamicConfig.rules[1].condition.match: invalid CEL:" in output
    assert "comprehensions nest more than 3 deep" in output
    assert "policies/heavy.yaml, document 1, spec.rules[2].condition.any.of[1].match: invalid CEL:" in output
    # A comprehension over the Policy's own attrs counts the list's real size (400), not the assumed one.
    assert "policies/heavy.yaml, document 1, spec.rules[1].condition.match: invalid CEL:" in output
    assert "exceeds the budget" in output
    # Identity provider rules run at every login: checked the same way.
    assert "idp.yaml, document 1, spec.aalRules[0].condition.match: invalid CEL:" in output
    assert "4 problems" in output
