"""The protocol's splits and seeds: a checked-in file names each profile's dev and test splits and the test seeds.

Dev splits are where parameters and defaults may be tuned; test splits only
report (the field's rule, as in OpenOOD: what chooses parameters never tests
them). ``pick_splits`` turns a ``--splits`` text into splits: protocol groups
(``test``, ``dev``), protocol names (``test-0``, ``dev-1``), explicit holdouts
(``animals:cat+cow+dog``) or a fresh draw (``draw:4``, ``draw:4@7``).
"""

from __future__ import annotations

import hashlib
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..data import OFFLINE_PROFILES, ProfileSplit, draw_splits
from ..errors import InputError

# confirm and final: a second and a third test draw (each its own draw seed), each fixed before any cell ran on it
GROUPS = ("dev", "test", "confirm", "final")
TEST_GROUPS = ("test", "confirm", "final")  # the draws that only report


@dataclass(frozen=True)
class Protocol:
    """The parsed protocol file: per profile its named dev and test splits, the seeds and the draw seed."""

    splits: dict[str, dict[str, list[ProfileSplit]]]  # profile -> group -> splits, named "<group>-<i>"
    n_holdout: dict[str, int]
    test_seeds: list[int]
    dev_seeds: list[int]
    draw_seed: int
    confirm_draw_seed: int = 0
    final_draw_seed: int = 0
    sha: str = ""  # sha256 of the file (12 hex digits): results record which protocol they ran
    path: Path | None = None
    raw: dict = field(default_factory=dict, repr=False)


def load_protocol(path: str | Path) -> Protocol:
    """Read and check a protocol file (TOML, see ``bench/protocol/splits.toml``)."""
    path = Path(path)
    try:
        text = path.read_bytes()
        raw = tomllib.loads(text.decode())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError("protocol", f"{path}: {exc}") from None
    splits: dict[str, dict[str, list[ProfileSplit]]] = {}
    n_holdout: dict[str, int] = {}
    for profile in OFFLINE_PROFILES:
        if profile not in raw:
            continue
        entry = raw[profile]
        n_holdout[profile] = int(entry["n_holdout"])
        splits[profile] = {}
        for group in GROUPS:
            parsed = [
                ProfileSplit.parse(f"{profile}:{held}", f"{group}-{i}") for i, held in enumerate(entry.get(group, []))
            ]
            if any(len(s.holdout) != n_holdout[profile] for s in parsed):
                raise InputError("protocol", f"{path}: every {profile} split holds out {n_holdout[profile]} classes")
            splits[profile][group] = parsed
        holdouts = [s.holdout for g in GROUPS for s in splits[profile][g]]
        if len(set(holdouts)) != len(holdouts):
            raise InputError("protocol", f"{path}: a {profile} split is listed twice (dev and test never overlap)")
    return Protocol(
        splits,
        n_holdout,
        [int(s) for s in raw.get("test_seeds", [])],
        [int(s) for s in raw.get("dev_seeds", [])],
        int(raw.get("draw_seed", 0)),
        int(raw.get("confirm_draw_seed", 0)),
        int(raw.get("final_draw_seed", 0)),
        hashlib.sha256(text).hexdigest()[:12],
        path,
        raw,
    )


def pick_splits(spec: str, profiles: list[str], protocol: Protocol) -> list[ProfileSplit]:
    """Comma-separated items, each for every profile in ``profiles`` unless it names its profile:

    ``test`` / ``dev`` / ``confirm`` / ``final`` (the protocol's groups), ``test-0`` (one by name), ``default`` (the profile's default
    holdout), ``draw:N`` or ``draw:N@SEED`` (N random holdouts, the protocol's size, with the draw seed or SEED;
    never one of the protocol's splits), ``animals:cat+cow+dog`` or ``animals:2+3+4`` (an explicit holdout).
    """
    out: list[ProfileSplit] = []
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        if ":" in item and item.split(":", 1)[0] in OFFLINE_PROFILES:
            split = ProfileSplit.parse(item)
            out.append(_named(split, protocol))
            continue
        for profile in profiles:
            out += _resolve(item, profile, protocol)
    if not out:
        raise InputError("splits", f"{spec!r} names no split")
    return list(dict.fromkeys(out))


def _named(split: ProfileSplit, protocol: Protocol) -> ProfileSplit:
    """The protocol's name for an explicit holdout, when it lists it."""
    for group in protocol.splits.get(split.profile, {}).values():
        for s in group:
            if s.holdout == split.holdout:
                return s
    return split


def _resolve(item: str, profile: str, protocol: Protocol) -> list[ProfileSplit]:
    groups = protocol.splits.get(profile)
    if item == "default":
        return [_named(ProfileSplit.default(profile), protocol)]
    if groups is None:
        raise InputError("splits", f"the protocol file lists no splits for {profile}")
    if item in GROUPS:
        return list(groups[item])
    group, _, index = item.partition("-")
    if group in GROUPS and index.isdigit():
        if int(index) >= len(groups[group]):
            raise InputError("splits", f"{profile} has {len(groups[group])} {group} splits, no {item}")
        return [groups[group][int(index)]]
    if item.startswith("draw:"):
        n, _, seed = item[5:].partition("@")
        if not n.isdigit() or (seed and not seed.isdigit()):
            raise InputError("splits", f"{item!r}: write draw:N or draw:N@SEED")
        listed = [s.holdout for g in GROUPS for s in groups[g]]
        drawn = draw_splits(
            profile,
            int(n),
            n_holdout=protocol.n_holdout[profile],
            seed=int(seed) if seed else protocol.draw_seed,
            exclude=listed,
        )
        return [ProfileSplit(s.profile, s.holdout, f"draw-{i}") for i, s in enumerate(drawn)]
    raise InputError(
        "splits",
        f"{item!r} is not a split: use dev, test, confirm, final, dev-0, test-3, default, draw:N[@SEED] or PROFILE:word+word",
    )


def git_state(folder: str | Path) -> dict:
    """The commit of the code a run ran (and whether its tree had uncommitted changes), for the results file."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}
