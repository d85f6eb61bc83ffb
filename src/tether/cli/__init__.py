"""The `tether` command line."""

from tether.cli.main import main

__all__ = ["main"]
