"""Command line: one module per command group, each mapping flags onto the Python API."""
