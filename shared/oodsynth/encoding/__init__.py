"""The text-aligned image encoder: its model, training, anchors (SD token rows) and feature banks built with it.

Imports ``data``, ``bank``, ``checkpoints`` and leaves.
"""
