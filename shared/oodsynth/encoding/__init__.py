"""The text-aligned image encoder: its model, training, anchors (SD token rows) and feature banks built with it; and
``recipe``, the fields every training run declares once (the encoder's, the OOD trainer's and the lab's).

Imports ``data``, ``bank``, ``checkpoints`` and leaves.
"""
