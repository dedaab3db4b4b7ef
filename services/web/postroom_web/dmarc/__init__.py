"""The DMARC dashboard's data, charts and verdict (pure: no HTTP); docs/web.md."""
