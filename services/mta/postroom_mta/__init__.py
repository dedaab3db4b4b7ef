"""The mta service of Postroom."""
