"""The decode queue: job payloads (validated on both sides of Redis) and enqueueing them with RQ.

Imports leaves (errors, config, names, store naming) and ``decoding.presets``; never torch.
"""
