"""The API's shared state in Redis: named fits with their banks (``fits``), drawn samples (``samples``), each
tenant's within a byte budget of its own (``sample_budget``), the blob layout both use (``blobs``) and the Redis
connection (``redis_conn``).

Imports leaves (``bank``, ``config``, ``names``, ``errors``).
"""
