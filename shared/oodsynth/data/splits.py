"""Splits: a profile with its held-out classes, named or drawn with a fixed seed.

A *split* (``ProfileSplit``) is a profile with its held-out classes; each
profile's default holdout is the one in ``offline.py``, and any other is an input
(``ProfileSplit.parse("animals:cat+cow")``, ``draw_splits``), never a module
edit. ``ProfileSplit.key`` names the held-out classes and hashes the data it is
built from: every cached asset and result of a split carries it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .images import DataUnavailableError, ImageData
from .offline import check_holdout, load_profile_split, offline_profile, profile_data_hash, profile_ood_sets


@dataclass(frozen=True)
class ProfileSplit:
    """A profile with its held-out (near-OOD) classes: what every lab asset and cell is built for.

    ``name`` labels it in reports (``dev-0``, ``test-2``); it is not part of the key, so the same holdout under
    two names shares its cached assets.
    """

    profile: str
    holdout: tuple[int, ...]
    name: str = ""
    test_fraction: float = 0.3
    seed: int = 0  # of the stratified train/test split of the ID classes

    def __post_init__(self) -> None:
        object.__setattr__(self, "holdout", tuple(sorted(int(h) for h in self.holdout)))
        check_holdout(offline_profile(self.profile), 8, self.holdout)

    @classmethod
    def default(cls, profile: str) -> ProfileSplit:
        return cls(profile, offline_profile(profile).holdout, "default")

    @classmethod
    def parse(cls, text: str, name: str = "") -> ProfileSplit:
        """``animals`` (its default holdout), ``animals:dog+horse+sheep`` (class words) or ``animals:4,7,8``."""
        profile, _, held = text.partition(":")
        if not held:
            return cls.default(profile)
        words = offline_profile(profile).words
        out = []
        for part in held.replace(",", "+").split("+"):
            part = part.strip()
            if part.isdigit():
                out.append(int(part))
            elif part in words:
                out.append(words.index(part))
            else:
                raise DataUnavailableError("holdout", f"{part!r} is not a class of {profile} ({', '.join(words)})")
        return cls(profile, tuple(out), name)

    @property
    def words(self) -> tuple[str, ...]:
        """The held-out classes' words."""
        return tuple(offline_profile(self.profile).words[h] for h in self.holdout)

    @property
    def label(self) -> str:
        """``animals:dog+horse+sheep``, which ``parse`` reads back."""
        return f"{self.profile}:{'+'.join(self.words)}"

    @property
    def key(self) -> str:
        """The held-out classes plus a hash of the data (raw arrays, holdout, ID train/test split): part of every
        cache key of the split's assets and cells."""
        data = f"{profile_data_hash(self.profile)}|{self.holdout}|{self.test_fraction}|{self.seed}"
        return f"h{'-'.join(map(str, self.holdout))}-{hashlib.sha256(data.encode()).hexdigest()[:8]}"

    def load(self, split: str = "train", image_size: int | None = None) -> ImageData:
        return load_profile_split(
            self.profile,
            split,
            image_size=image_size,
            holdout=self.holdout,
            test_fraction=self.test_fraction,
            seed=self.seed,
        )

    def ood_sets(self, image_size: int | None = None) -> dict[str, ImageData]:
        return profile_ood_sets(self.profile, image_size=image_size, holdout=self.holdout)


def draw_splits(profile: str, n: int, *, n_holdout: int, seed: int, exclude=()) -> list[ProfileSplit]:
    """``n`` distinct random holdouts of ``n_holdout`` classes, drawn with ``seed`` (a fixed seed: the same
    splits on every machine), none equal to a holdout in ``exclude``."""
    words = offline_profile(profile).words
    taken = {tuple(sorted(h)) for h in exclude}
    rng = np.random.default_rng(seed)
    out: list[ProfileSplit] = []
    for _ in range(10_000):
        if len(out) == n:
            break
        held = tuple(sorted(int(c) for c in rng.choice(len(words), n_holdout, replace=False)))
        if held not in taken:
            taken.add(held)
            out.append(ProfileSplit(profile, held))
    if len(out) < n:
        raise DataUnavailableError("splits", f"{profile} has fewer than {n} distinct holdouts of {n_holdout} left")
    return out
