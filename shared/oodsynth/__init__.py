"""oodsynth: imagine outliers for out-of-distribution detection.

The library every part imports: feature banks, anchors, class densities,
samplers, job schemas, queue connection, result store, encoder, training,
metrics and the CLI. No web framework and no queue-worker code lives here.
"""

__version__ = "0.1.0"
