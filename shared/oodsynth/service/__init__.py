"""The application layer: each use case once, with its limits and connections passed in.

The HTTP routes, the CLI commands and the queue's job function are adapters
of a few lines around these calls, so a limit or a check holds on every
surface, and every failure is a typed ``oodsynth.errors`` exception.
"""

from .features import EmbedderCache, embed_uploads
from .fits import create_fit
from .generation import GenerateRequest, enqueue_generation, plan_generation
from .sampling import draw_sample

__all__ = [
    "EmbedderCache",
    "GenerateRequest",
    "create_fit",
    "embed_uploads",
    "draw_sample",
    "enqueue_generation",
    "plan_generation",
]
