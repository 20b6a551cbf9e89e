"""Validation: every problem placed at file, document and path, all reported at once, no secret echoed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from reconciler import json_schema, references, validate
from reconciler.errors import (
    ConfigError,
    DanglingReference,
    DuplicateName,
    InvalidExpression,
    ManifestErrors,
    SchemaViolation,
)
from reconciler.load import load_directory
from reconciler.validate import validate_all

WriteTree = Callable[[dict[str, str]], Path]  # the `write_tree` fixture in conftest.py

SECRETS = """\
kind: Secret
metadata: {name: db-password}
data: {value: "pw-value"}
"""


def problems(root: Path) -> list[ConfigError]:
    documents = load_directory(root)
    with pytest.raises(ManifestErrors) as info:
        validate_all(documents)
    return info.value.errors


def places(errors: list[ConfigError]) -> list[tuple[str, int | None, str]]:
    return [(e.source.file, e.source.document, e.source.path) for e in errors]


def service(spec: str, name: str = "db") -> str:
    return f"kind: Service\nmetadata: {{name: {name}}}\nspec:\n" + "".join(f"  {line}\n" for line in spec.splitlines())


def test_seed_example_is_valid(seed_root: Path) -> None:
    validate_all(load_directory(seed_root))


def test_schemas_are_valid_draft_2020_12_and_catch_typos() -> None:
    paths = sorted(json_schema.SCHEMA_DIR.glob("*.schema.json"))
    assert [p.name for p in paths] == [
        "credential.schema.json",
        "group.schema.json",
        "identityprovider.schema.json",
        "policy.schema.json",
        "secret.schema.json",
        "service.schema.json",
        "user.schema.json",
    ]
    for path in paths:
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["additionalProperties"] is False and schema["description"]


def test_error_names_file_document_and_path(write_tree: WriteTree) -> None:
    root = write_tree(
        {
            "a/db.yaml": "kind: Group\nmetadata: {name: g}\n---\n"
            + service(
                "config:\n"
                "  upstream: {url: postgres://pg}\n"
                "dynamicConfig:\n"
                "  configs:\n"
                "    - {name: one, parent: default}\n"
                "    - {name: two, parent: default, postgres: {auth: {password: {fromSecret: missing-pw}}}}\n"
            )
        }
    )
    [error] = problems(root)
    assert isinstance(error, DanglingReference)
    assert str(error) == (
        "a/db.yaml, document 2, spec.dynamicConfig.configs[1].postgres.auth.password.fromSecret: "
        "no Secret named 'missing-pw'"
    )


def test_many_errors_across_files_are_reported_together(write_tree: WriteTree) -> None:
    root = write_tree(
        {
            "a.yaml": service("port: 99999\nconfig: {upstream: {url: postgres://pg}, postgre: {}}"),
            "b.yaml": "kind: User\nmetadata: {name: Bob}\nspec: {type: ROBOT, groups: [nobody]}\n",
            "c.yaml": "kind: Widget\nmetadata: {name: w}\n---\nkind: Group\nmetadata: {name: g, colour: red}\n",
        }
    )
    errors = problems(root)
    assert [(str(e.source), e.message) for e in errors] == [
        (
            "a.yaml, document 1, spec.config.postgre",
            "unknown field (did you mean 'postgres'?); expected one of: name, postgres, upstream",
        ),  # fmt: skip
        ("a.yaml, document 1, spec.port", "must be at most 65535"),
        (
            "b.yaml, document 1, metadata.name",
            "must match ^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$ (Lowercase letters, "
            "digits, '.', '_' and '-', starting and ending with a letter or digit.)",
        ),  # fmt: skip
        ("b.yaml, document 1, spec.type", "must be one of: HUMAN, WORKLOAD"),
        ("b.yaml, document 1, spec.groups[0]", "no Group named 'nobody'"),
        (
            "c.yaml, document 1, kind",
            "unknown kind 'Widget'; expected one of Credential, Group, IdentityProvider, Policy, Secret, Service, User",
        ),
        (
            "c.yaml, document 2, metadata.colour",
            "unknown field; expected one of: annotations, description, displayName, labels, name, tags",
        ),  # fmt: skip
    ]


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        (
            "config: {upstream: {url: postgres://pg}, postgres: {auth: {password: {fromSecret: db-pasword}}}}",
            "spec.config.postgres.auth.password.fromSecret",
            "no Secret named 'db-pasword' (did you mean 'db-password'?)",
        ),
        (
            "config: {upstream: {url: postgres://pg}, postgres: {tls: {ca: {fromSecret: ca}}}}",
            "spec.config.postgres.tls.ca.fromSecret",
            "no Secret named 'ca'",
        ),
        (
            "dynamicConfig:\n  configs: [{name: a, upstream: {url: postgres://pg}}]\n"
            "  rules: [{condition: {matchAny: true}, configName: b}]",
            "spec.dynamicConfig.rules[0].configName",
            "no config named 'b'",
        ),
        (
            "dynamicConfig:\n  configs: [{name: a, parent: default}]\n",  # no top-level config
            "spec.dynamicConfig.configs[0].parent",
            "no config named 'default'",
        ),
    ],
)
def test_dangling_references(write_tree: WriteTree, spec: str, path: str, message: str) -> None:
    [error] = problems(write_tree({"db.yaml": service(spec), "s.yaml": SECRETS}))
    assert isinstance(error, DanglingReference)
    assert (error.source.path, error.message) == (path, message)


def test_parent_cycle_is_reported_once(write_tree: WriteTree) -> None:
    spec = (
        "dynamicConfig:\n"
        "  configs:\n"
        "    - {name: a, parent: c, upstream: {url: postgres://pg}}\n"
        "    - {name: b, parent: a}\n"
        "    - {name: c, parent: b}\n"
        "    - {name: d, parent: d, upstream: {url: postgres://pg}}\n"
    )
    errors = problems(write_tree({"db.yaml": service(spec)}))
    assert [(e.source.path, e.message) for e in errors] == [
        ("spec.dynamicConfig.configs[0].parent", "parent chain loops: a -> c -> b -> a"),
        ("spec.dynamicConfig.configs[3].parent", "parent chain loops: d -> d"),
    ]


def test_upstream_is_required_somewhere_in_the_parent_chain(write_tree: WriteTree) -> None:
    spec = (
        "config: {upstream: {url: postgres://pg:6432}}\n"
        "dynamicConfig:\n"
        "  configs:\n"
        "    - {name: inherits, parent: default}\n"
        "    - {name: orphan, postgres: {user: x}}\n"
        "    - {name: bad-port, upstream: {url: 'postgres://pg:99999'}}\n"
    )
    errors = problems(write_tree({"db.yaml": service(spec)}))
    assert [(type(e), e.source.path, e.message) for e in errors] == [
        (SchemaViolation, "spec.dynamicConfig.configs[1]", "upstream.url is required (here or in a parent config)"),
        (SchemaViolation, "spec.dynamicConfig.configs[2].upstream.url", "not a valid postgres://host:port URL"),
    ]


def test_service_needs_a_config(write_tree: WriteTree) -> None:
    [error] = problems(write_tree({"db.yaml": service("port: 5432")}))
    assert (error.source.path, error.message) == ("spec", "needs `config` or at least one dynamicConfig.configs entry")


def test_bad_cel_is_placed_at_the_expression(write_tree: WriteTree) -> None:
    spec = (
        "config: {upstream: {url: postgres://pg}}\n"
        "dynamicConfig:\n"
        "  configs: [{name: a, parent: default}]\n"
        "  rules:\n"
        "    - condition: {match: 'ctx.user.spec.groups.hasAny([\"x\"]'}\n"
        "      configName: a\n"
        "    - condition: {all: {of: [{matchAny: true}, {none: {of: [{not: 'ctx.user.spec.groups.hasAnyy([])'}]}}]}}\n"
        "      configName: a\n"
    )
    errors = problems(write_tree({"db.yaml": service(spec)}))
    assert all(isinstance(e, InvalidExpression) for e in errors)
    assert [(e.source.path, e.message) for e in errors] == [
        ("spec.dynamicConfig.rules[0].condition.match", "invalid CEL: column 33: unexpected end of expression"),
        (
            "spec.dynamicConfig.rules[1].condition.all.of[1].none.of[0].not",
            "invalid CEL: column 22: unknown function 'hasAnyy'",
        ),
    ]


def test_condition_shape(write_tree: WriteTree) -> None:
    spec = (
        "config: {upstream: {url: postgres://pg}}\n"
        "dynamicConfig:\n"
        "  rules:\n"
        "    - {condition: {match: 'true', matchAny: true}, configName: default}\n"
        "    - {condition: {any: {of: []}}, configName: default}\n"
    )
    errors = problems(write_tree({"db.yaml": service(spec)}))
    assert [(e.source.path, e.message) for e in errors] == [
        ("spec.dynamicConfig.rules[0].condition", "set exactly one of: match, matchAny, not, all, any, none"),
        ("spec.dynamicConfig.rules[1].condition.any.of", "must not be empty"),
    ]


def test_duplicate_names_per_kind(write_tree: WriteTree) -> None:
    root = write_tree(
        {
            "a.yaml": "kind: Group\nmetadata: {name: ops}\n---\nkind: User\nmetadata: {name: ops}\n",
            "b.yaml": "kind: Group\nmetadata: {name: ops}\n",
            "c.yaml": service(
                "config: {upstream: {url: postgres://pg}}\ndynamicConfig:\n"
                "  configs: [{name: x, parent: default}, {name: x, parent: default}]"
            ),
        }
    )
    errors = problems(root)
    assert all(isinstance(e, DuplicateName) for e in errors)
    assert [str(e) for e in errors] == [
        "b.yaml, document 1, metadata.name: Group 'ops' is already defined in a.yaml, document 1",
        "c.yaml, document 1, spec.dynamicConfig.configs[1]: config 'x' is defined twice in this Service",
    ]


def test_a_secret_value_never_appears_in_any_error(write_tree: WriteTree) -> None:
    marker = "Sup3r-S3cret-Value"
    root = write_tree(
        {
            "s1.yaml": f"kind: Secret\nmetadata: {{name: s1}}\ndata: '{marker}'\n",
            "s2.yaml": f"kind: Secret\nmetadata: {{name: s2}}\ndata: {{value: '{marker}', extra: '{marker}'}}\n",
            "s3.yaml": f"kind: Secret\nmetadata: {{name: s3}}\ndata: {{valu: '{marker}'}}\n",
            "s4.yaml": f"kind: Secret\nmetadata: {{name: s4}}\ndata: [{marker}]\nvalue: {marker}\n",
            "s5.yaml": f"kind: Secret\nmetadata: {{name: Bad_Name}}\ndata: {{value: '{marker}'}}\n",
            "s6.yaml": "kind: Secret\nmetadata: {name: s6}\ndata: {value: 4242424242}\n",
            # A password written inline where a reference belongs, and one inside the URL.
            "db.yaml": service(
                f"config: {{upstream: {{url: 'postgres://u:{marker}@pg'}}, "
                f"postgres: {{user: '{marker}\u00e9', auth: {{password: '{marker}'}}}}}}"
            ),
        }
    )
    errors = problems(root)
    assert len(errors) >= 8
    text = "\n".join(f"{e}\n{e.detail}\n{e.hint}" for e in errors) + str(ManifestErrors(errors))
    assert marker not in text and "4242424242" not in text


def test_checks_can_run_alone(seed_root: Path, write_tree: WriteTree) -> None:
    documents = load_directory(seed_root)
    for check in (validate.against_schemas, references.references, validate.unique_names, validate.expressions):
        assert check(documents) == []  # checks return their problems; validate_all raises them together
    broken = load_directory(write_tree({"u.yaml": "kind: User\nmetadata: {name: u}\nspec: {groups: [x]}\n"}))
    assert validate.against_schemas(broken) == []
    assert "no Group named 'x'" in str(ManifestErrors(references.references(broken)))


def test_md5_password_and_trust_need_tls_that_verifies_the_server(write_tree: WriteTree) -> None:
    root = write_tree({
        "db.yaml": SECRETS + "---\n" + service(
            "config:\n"
            "  upstream: {url: postgres://pg}\n"
            "  postgres: {auth: {password: {fromSecret: db-password}, mechanisms: [SCRAM_SHA_256, MD5]}}\n"
            "dynamicConfig:\n"
            "  configs:\n"
            "    - {name: inherits, parent: default, postgres: {sslMode: REQUIRE}}\n"
            "    - {name: fixed, parent: default, postgres: {sslMode: VERIFY_FULL}}\n"
            "    - name: own\n"
            "      upstream: {url: postgres://pg}\n"
            "      postgres:\n"
            "        sslMode: VERIFY_CA\n"
            "        auth: {password: {fromSecret: db-password}, mechanisms: [PASSWORD]}\n"
            "    - name: trusting\n"
            "      upstream: {url: postgres://pg}\n"
            "      postgres: {auth: {password: {fromSecret: db-password}, mechanisms: [TRUST]}}\n"
        ),
    })
    errors = problems(root)
    assert places(errors) == [
        ("db.yaml", 2, "spec.config.postgres.auth.mechanisms"),
        ("db.yaml", 2, "spec.dynamicConfig.configs[0].postgres.sslMode"),
        ("db.yaml", 2, "spec.dynamicConfig.configs[3].postgres.auth.mechanisms"),
    ]
    assert all(isinstance(e, SchemaViolation) for e in errors)
    assert "names MD5" in errors[0].message and "VERIFY_CA or VERIFY_FULL" in errors[0].message
    assert "(config 'inherits' has REQUIRE)" in errors[1].message
    assert "names TRUST" in errors[2].message


def test_scram_only_is_the_default_and_needs_no_tls(write_tree: WriteTree) -> None:
    root = write_tree({"db.yaml": SECRETS + "---\n" + service(
        "config:\n"
        "  upstream: {url: postgres://pg}\n"
        "  postgres: {sslMode: DISABLE, auth: {password: {fromSecret: db-password}, mechanisms: [SCRAM_SHA_256]}}\n"
    )})
    validate_all(load_directory(root))


def test_unknown_mechanism_is_a_schema_error(write_tree: WriteTree) -> None:
    root = write_tree({"db.yaml": SECRETS + "---\n" + service(
        "config:\n"
        "  upstream: {url: postgres://pg}\n"
        "  postgres: {auth: {password: {fromSecret: db-password}, mechanisms: [GSSAPI]}}\n"
    )})
    assert places(problems(root)) == [("db.yaml", 2, "spec.config.postgres.auth.mechanisms[0]")]
