"""CLI commands (training)."""

from .app import app  # noqa: F401
