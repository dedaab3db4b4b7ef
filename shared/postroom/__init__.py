"""Postroom's common library: configuration, logs, store, queue, TLS and protocol grammar."""

__version__ = "0.1.0"
