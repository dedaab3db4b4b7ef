"""The dmarc service of Postroom."""
