"""Fault campaign: crashes and outages under load lose no accepted message (issue 11)."""
