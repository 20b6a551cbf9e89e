"""Build the compiled parts of the data path (Cython pure-Python mode); the rest is pyproject.toml.

Each module below is plain Python and runs as such without a build; Cython compiles the same file with the C types
of its .pxd, so the per-byte loops run as C. Annotations are documentation only (`annotation_typing=False`), so
compiled and interpreted runs behave alike (tests compare them).
"""

from Cython.Build import cythonize
from setuptools import setup

# Typed in a .pxd beside each: without C types, Cython's generic attribute and call paths were no faster than
# Python 3.11's specializing interpreter (the plain relay's instructions per round trip did not move when
# connection.py, relay.py, session.py and the access log were compiled as they are), so only these are.
COMPILED = [
    "proxy/pgwire/walker.py",  # the one frame walker: every chunk of both directions
    "proxy/policy/shape_key.py",  # the literal-free key of every gated Query and Parse
    "proxy/audit/json_text.py",  # the JSON string of every logged query text
]

setup(ext_modules=cythonize(COMPILED, language_level=3, compiler_directives={"annotation_typing": False}))
