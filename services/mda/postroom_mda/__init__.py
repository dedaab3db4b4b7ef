"""The mda service of Postroom."""
