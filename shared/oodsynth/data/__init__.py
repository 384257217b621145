"""Image datasets for the encoder and the OOD training job: ``ImageData`` (``images``), the offline profiles
(``offline``), their splits (``splits``) and one loader for every dataset name (``loader``).

Every dataset yields ``(float tensor (3, H, W) in [0, 1], class index)``; per-channel normalisation lives inside
the models, so images from the store, the API and torchvision all go through the same ``ToTensor`` path.
Imports only leaves (``errors``).
"""

from .images import DataUnavailableError, ImageData, image_tensors
from .loader import load_dataset
from .offline import (
    ANIMAL_WORDS,
    DIGIT_WORDS,
    FAR_KINDS,
    OFFLINE_PROFILES,
    NumpyOnlyUnpickler,
    OfflineProfile,
    load_numpy_pickle,
    load_profile_split,
    offline_profile,
    profile_data_hash,
    profile_ood_sets,
)
from .splits import ProfileSplit, draw_splits

__all__ = [
    "ANIMAL_WORDS",
    "DIGIT_WORDS",
    "FAR_KINDS",
    "OFFLINE_PROFILES",
    "DataUnavailableError",
    "ImageData",
    "NumpyOnlyUnpickler",
    "OfflineProfile",
    "ProfileSplit",
    "draw_splits",
    "image_tensors",
    "load_dataset",
    "load_numpy_pickle",
    "load_profile_split",
    "offline_profile",
    "profile_data_hash",
    "profile_ood_sets",
]
