"""The imap service of Postroom."""
