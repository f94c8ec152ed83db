"""Backends: one file per device kind, all behind the protocol in protocol.py."""
