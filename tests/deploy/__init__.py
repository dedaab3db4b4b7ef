"""Deployment tests: compose.yaml, the Dockerfile, and the documented operator commands."""
