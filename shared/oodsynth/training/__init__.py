"""Training and scoring OOD detectors: CE + beta * L_ood, feature-space, virtual (VOS, NPOS) and mixing outliers, the run config, the classifier and its checkpoint, the stored or streamed outlier dataset, post-hoc detectors, evaluation, metrics.

Every score shares one contract and one sign (``api.Detector``, higher = more in-distribution).

Imports ``encoding``, ``densities``, ``store``, ``data`` and leaves.
"""
