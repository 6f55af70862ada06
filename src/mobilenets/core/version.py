"""The package version, recorded in every file we export."""

__version__ = "0.1.0"
