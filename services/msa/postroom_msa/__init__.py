"""The msa service of Postroom."""
