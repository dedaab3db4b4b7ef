"""The REST API's endpoints under /api/v1, one module per area (docs/web.md)."""
