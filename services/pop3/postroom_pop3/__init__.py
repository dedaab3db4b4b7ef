"""The pop3 service of Postroom."""
