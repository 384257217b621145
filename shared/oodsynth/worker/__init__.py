"""The worker side of the queue: the decode job function, the allow-listed RQ worker and the per-GPU launcher.

Imports ``queue``, ``decoding``, ``store``, ``state`` and leaves; the API never imports it.
"""
