"""The saml-idp peer starts from the lockfile (samlp overridden to 7.1.1) and serves signed IdP metadata.

The SAML service provider itself is a later slice; this only proves the peer is ready for it.
"""

from __future__ import annotations

import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support import peers
from tests.support.peers import SAML_IDP_ISSUER, PeerError, start_saml_idp

MD = "{urn:oasis:names:tc:SAML:2.0:metadata}"
DS = "{http://www.w3.org/2000/09/xmldsig#}"


def test_saml_idp_serves_metadata() -> None:
    sp = "http://localhost:8766/saml"
    peer = start_saml_idp(None, f"{sp}/acs", f"{sp}/metadata")
    try:
        with urllib.request.urlopen(f"{peer.url}/metadata", timeout=5) as response:
            assert response.status == 200
            root = ET.fromstring(response.read())
    finally:
        peer.stop()
    assert root.tag == f"{MD}EntityDescriptor" and root.get("entityID") == SAML_IDP_ISSUER
    idp = root.find(f"{MD}IDPSSODescriptor")
    assert idp is not None
    assert idp.find(f"{MD}KeyDescriptor/{DS}KeyInfo/{DS}X509Data/{DS}X509Certificate") is not None
    bindings = {s.get("Binding", "").rsplit(":", 1)[-1] for s in idp.findall(f"{MD}SingleSignOnService")}
    assert {"HTTP-Redirect", "HTTP-POST"} <= bindings
    assert peer.is_stopped and peer.process.returncode is not None
    assert peer.workdir is not None and not peer.workdir.exists()  # the throwaway signing key is gone


def test_missing_node_modules_says_to_run_npm_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(peers, "NODE_MODULES", tmp_path / "node_modules")
    with pytest.raises(PeerError, match="run `npm ci`"):
        start_saml_idp(None, "http://localhost:1/acs", "http://localhost:1/metadata")
