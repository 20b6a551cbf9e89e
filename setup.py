"""Build the compiled frame walker (proxy/pgwire/walker.py, Cython pure-Python mode); the rest is pyproject.toml."""

from Cython.Build import cythonize
from setuptools import setup

setup(ext_modules=cythonize(["proxy/pgwire/walker.py"], language_level=3))
