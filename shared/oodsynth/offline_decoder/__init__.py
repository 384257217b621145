"""The small Stable-Diffusion-shaped decoder trained offline on a profile, its assets cache and quality checks, and the tiny random-weight pipeline.

Imports ``data``, ``encoding``, ``decoding`` and leaves.
"""
