"""The console's HTML pages, one module per area (docs/web.md)."""
