"""Parser invariant: any bytes decrypt or raise SopsError, never anything else (as h11's fuzzing checks)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sops_corpus import CORPUS

from reconciler.sops import KeyRing, SopsError, decrypt_bytes, detect_format

# Age-only files: a PGP slot would start gpg for every example.
FILES = ["synthetic/types.yaml", "synthetic/multidoc.yaml", "flux/envs/env.env", "flux/files/file.txt"]


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            data[at:at] = draw(
                st.binary(min_size=1, max_size=16) | st.sampled_from([b"\n- ", b": ", b"[", b"{", b"&a *a"])
            )
    return bytes(data)


@pytest.mark.parametrize("name", FILES)
def test_mutated_files_raise_only_sops_errors(name: str, flux_age_keys: KeyRing) -> None:
    original = (CORPUS / name).read_bytes()

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated(original))
    def check(data: bytes) -> None:
        try:
            decrypt_bytes(data, flux_age_keys, file=name, input_type=detect_format(name))
        except SopsError:
            pass

    check()


@pytest.mark.parametrize(
    "text",
    ["a: 2024-13-45\nsops: {}\n", "a: " + "[" * 1200 + "\n", "x: !!python/object:os.system ls\n"],
    ids=["bad-date", "deep-nesting", "python-tag"],
)
def test_library_errors_become_format_errors(text: str, flux_age_keys: KeyRing) -> None:
    with pytest.raises(SopsError):
        decrypt_bytes(text, flux_age_keys, file="x.yaml", input_type="yaml")
