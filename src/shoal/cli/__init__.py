"""Command-line shells: parse flags, call the core, print results."""
