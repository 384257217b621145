"""Where decoded images go: an exactly-once result store with its manifest, on a folder or S3 (fsspec backends).

Imports leaves only.
"""
