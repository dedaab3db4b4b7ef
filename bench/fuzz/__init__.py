"""Coverage-guided fuzz targets (atheris) for the wire parsers; run with `make fuzz`."""
