"""CLI commands (core)."""

from .app import app  # noqa: F401
