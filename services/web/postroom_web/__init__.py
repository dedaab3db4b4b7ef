"""The web console and REST API (docs/web.md)."""
