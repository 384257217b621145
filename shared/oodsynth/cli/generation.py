"""CLI commands (generation)."""

from .app import app  # noqa: F401
