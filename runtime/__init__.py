"""Assemble one process, a group of workers or a replica from the same parts (proxy, identity, reconciler).

No subclassing of the proxy server: a topology is a composition behind the reconciler's `LiveTarget`, the
identity and admin hosts, and the registry's injected cancel router. The `pgwarden` command parses, calls, prints.
"""
