"""The session settings that change how PostgreSQL lexes query text, and whether we can read text as it would.

Two settings decide how the server splits query bytes into tokens: `client_encoding` (which bytes form one
character) and `standard_conforming_strings` (whether a backslash escapes in '...'). Both are GUC_REPORT:
the server sends ParameterStatus when they change, just before ReadyForQuery, so once every request sent
has been answered the last reported values are the truth. (`backslash_quote` and `escape_string_warning`
only add errors and warnings; the tokens stay the same.)

A text that is all ASCII with no backslash lexes the same under every client encoding and either value of
standard_conforming_strings ("lexing-neutral"). Anything else is read under the confirmed settings, or
refused where libpg_query (always UTF-8, always standard_conforming_strings=on) cannot reproduce them.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.pgwire.encodings import python_codec

# Client encodings in which a byte < 0x80 (a quote, a backslash) can be the second byte of a character.
# PostgreSQL refuses them as server encodings for this reason.
UNSAFE_CLIENT_ENCODINGS = frozenset({"SJIS", "SHIFTJIS2004", "BIG5", "GBK", "GB18030", "UHC", "JOHAB"})


def is_lexing_neutral(raw: bytes) -> bool:
    return raw.isascii() and b"\\" not in raw


def _ascii_skeleton(raw: bytes) -> bytes:
    return raw.translate(None, bytes(range(0x80, 0x100)))


@dataclass(frozen=True, slots=True)
class LexingState:
    """Confirmed client_encoding (as the server reports it) and standard_conforming_strings."""

    client_encoding: str
    standard_conforming_strings: str

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> LexingState:
        # Missing values (a server that does not report them) are kept empty: such text is refused.
        return cls(parameters.get("client_encoding", ""), parameters.get("standard_conforming_strings", ""))

    def refusal(self, raw: bytes) -> str | None:
        """Why this (non-neutral) text cannot be read as the server will read it, or None."""
        if b"\\" in raw and self.standard_conforming_strings.lower() != "on":
            return ("query text with a backslash is refused while standard_conforming_strings is "
                    f"{self.standard_conforming_strings or 'unknown'}: pgwarden cannot read it as PostgreSQL "
                    "would (SET standard_conforming_strings TO on)")
        key = self.client_encoding.upper().replace("_", "").replace("-", "")
        if not raw.isascii() and (key in UNSAFE_CLIENT_ENCODINGS or not key):
            return (f"query text with non-ASCII characters is refused in client_encoding "
                    f"{self.client_encoding or 'unknown'}: a quote or backslash byte can be part of a character "
                    "there, so pgwarden cannot read it as PostgreSQL would (use UTF8)")
        return None

    def decode(self, raw: bytes) -> str | None:
        """The text as the server reads it, or None when it cannot be decoded exactly (then it is UNKNOWN).

        Strict: a replacement character would make text that parses differently. And every ASCII byte must
        come out as itself (no codec turns a multibyte sequence into ASCII), so the tokens are the server's.
        """
        try:
            text = raw.decode(python_codec(self.client_encoding))
        except (UnicodeDecodeError, LookupError):
            return None
        if text.encode("ascii", "ignore") != _ascii_skeleton(raw):
            return None
        return text
