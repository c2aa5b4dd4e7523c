"""The `hotrepos` command line."""
