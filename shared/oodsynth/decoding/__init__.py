"""Stable Diffusion decoding of outlier vectors: the token-substitution pipeline, presets, feature reuse, verification.

``presets`` is torch-free (the API validates against it); the rest imports torch, diffusers and ``encoding``.
"""
