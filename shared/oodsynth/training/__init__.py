"""Training and scoring OOD detectors: CE + beta * L_ood, feature-space outliers, the stored-outlier dataset, evaluation, metrics.

Imports ``encoding``, ``densities``, ``store``, ``data`` and leaves.
"""
