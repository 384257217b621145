"""The API's shared state in Redis: the registry of banks, fits and samples, and the Redis connection.

Imports leaves (``bank``, ``config``, ``names``, ``errors``).
"""
