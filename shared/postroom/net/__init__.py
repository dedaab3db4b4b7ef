"""Network: TLS, PROXY protocol, connection limits, peers, listener sessions, DNS."""
