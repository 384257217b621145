"""Drawn samples kept in Redis for a while, so ``/generate`` can refer to one by id later.

A sample is stored under ``oodsynth:sample:<id>`` with a TTL (setting
``sample_ttl_s``) and within a byte budget: its arrays as raw little-endian
bytes and the rest as JSON (``StoredSample.to_fields``), read back in one round
trip with no parsing beyond the JSON. Files and HTTP answers carry the same
sample as one ``.npz`` (``StoredSample.to_bytes``, no pickle); a sample kept as
such an ``.npz`` in Redis is read too.

The hash's ``tenant`` field names the tenant that drew the sample (none: stored before tenants, so ``default``);
it is Redis's bookkeeping, not part of the sample, so neither of its forms carries it. A caller that does not see
the tenant (``KeyGrant.sees``) is told the sample does not exist. Each tenant's samples have a budget of their own
(``sample_budget``): a sample evicted to keep its tenant within it answers its tenant ``Gone`` (410), not
``NotFound``.
"""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import redis

from ..api_keys import LOCAL, KeyGrant
from ..config import get_settings
from ..errors import Gone, NotFound
from .blobs import as_bytes, chunk_fields, hash_mapping, read_chunks, read_parts, to_json
from .sample_budget import SampleBudget

if TYPE_CHECKING:  # imported lazily at run time: the samplers pull in scipy/torch
    from ..samplers import SampleResult

SAMPLE_PREFIX = "oodsynth:sample:"
_SAMPLE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# The arrays of a stored sample as its Redis hash keeps them (``StoredSample.to_fields``).
SAMPLE_PARTS = ("vectors", "class_index", "diagnostics")
SAMPLE_DTYPES: dict[str, np.dtype] = {
    "vectors": np.dtype("<f4"),
    "class_index": np.dtype("<i8"),
    "diagnostics": np.dtype("<f8"),
}


@dataclass
class StoredSample:
    """A drawn sample as kept in Redis (and written by ``oodsynth sample --out``)."""

    sample_id: str
    fit_name: str
    method: str
    params: dict
    seed: int
    vectors: np.ndarray  # float32 (M, D)
    class_index: np.ndarray  # int64 (M,)
    class_names: list[str]  # indexed by class index (all classes of the fit)
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)  # each (M,)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def from_result(
        cls, result: SampleResult, fit_name: str, class_names: Sequence[str], sample_id: str | None = None
    ) -> StoredSample:
        return cls(
            sample_id=sample_id or uuid.uuid4().hex,
            fit_name=fit_name,
            method=result.method,
            params=dict(result.params),
            seed=int(result.seed),
            vectors=np.asarray(result.vectors, dtype=np.float32),
            class_index=np.asarray(result.class_index, dtype=np.int64),
            class_names=[str(n) for n in class_names],
            diagnostics={k: np.asarray(v) for k, v in result.diagnostics.items()},
        )

    def _identity(self) -> dict:
        """What names the sample and how it was drawn: the ``meta`` of both of its stored forms."""
        return {
            "sample_id": self.sample_id,
            "fit_name": self.fit_name,
            "method": self.method,
            "params": self.params,
            "seed": int(self.seed),
        }

    def to_bytes(self) -> bytes:
        meta = self._identity()
        arrays: dict[str, np.ndarray] = {
            "vectors": np.asarray(self.vectors, dtype=np.float32),
            "class_index": np.asarray(self.class_index, dtype=np.int64),
            "class_names": np.asarray(self.class_names, dtype=str),
            "meta": np.asarray(to_json(meta)),
        }
        for k, v in self.diagnostics.items():
            arrays[f"diagnostics.{k}"] = np.asarray(v, dtype=np.float64)
        buf = io.BytesIO()
        np.savez(
            buf, allow_pickle=False, **arrays
        )  # none is an object array: stated, so mypy maps **arrays to the arrays
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> StoredSample:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            diagnostics = {k.split(".", 1)[1]: z[k] for k in z.files if k.startswith("diagnostics.")}
            return cls(
                **{k: meta[k] for k in ("sample_id", "fit_name", "method", "params", "seed")},
                vectors=z["vectors"],
                class_index=z["class_index"],
                class_names=[str(n) for n in z["class_names"]],
                diagnostics=diagnostics,
            )

    def to_fields(self) -> dict[str, bytes]:
        """The Redis hash fields of the sample: ``meta`` (JSON), then ``vectors`` (float32), ``class_index``
        (int64) and ``diagnostics`` (float64, one row per name in ``meta``) as raw little-endian chunks.

        Decoding them is a JSON parse and three ``np.frombuffer`` calls: a tenth of the CPU of reading the
        ``.npz`` (a zip with a header to parse per array), which every ``POST /generate`` of a sample paid.
        """
        vectors = np.ascontiguousarray(self.vectors, dtype=SAMPLE_DTYPES["vectors"])
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-d, got shape {vectors.shape}")
        names = list(self.diagnostics)
        diagnostics = np.empty((len(names), len(vectors)), dtype=SAMPLE_DTYPES["diagnostics"])
        for row, name in zip(diagnostics, names):
            row[:] = self.diagnostics[name]
        meta = {
            **self._identity(),
            "class_names": [str(n) for n in self.class_names],
            "shape": list(vectors.shape),
            "diagnostics": names,
        }
        return {
            "meta": to_json(meta).encode(),
            **chunk_fields("vectors", vectors.tobytes()),
            **chunk_fields(
                "class_index", np.ascontiguousarray(self.class_index, SAMPLE_DTYPES["class_index"]).tobytes()
            ),
            **chunk_fields("diagnostics", diagnostics.tobytes()),
        }

    @classmethod
    def from_fields(cls, meta: bytes, parts: dict[str, bytes]) -> StoredSample:
        """The sample of ``to_fields``; ``ValueError`` when an array's size does not match the stated shape."""
        info = json.loads(meta)
        m, d = (int(n) for n in info["shape"])
        names = list(info["diagnostics"])
        arrays = {}
        for part, shape in (("vectors", (m, d)), ("class_index", (m,)), ("diagnostics", (len(names), m))):
            arrays[part] = np.frombuffer(parts[part], dtype=SAMPLE_DTYPES[part]).reshape(shape)
        return cls(
            **{k: info[k] for k in ("sample_id", "fit_name", "method", "params", "seed")},
            vectors=arrays["vectors"],
            class_index=arrays["class_index"],
            class_names=list(info["class_names"]),
            diagnostics=dict(zip(names, arrays["diagnostics"])),
        )

    def save(self, path) -> None:
        with open(path, "wb") as f:
            f.write(self.to_bytes())

    @classmethod
    def load(cls, path) -> StoredSample:
        with open(path, "rb") as f:
            return cls.from_bytes(f.read())


class SampleRegistry:
    """Drawn samples by id, kept for ``ttl_s`` so later requests can decode them, each tenant's within a byte budget.

    Each sample also has an entry in its tenant's index (id -> time, id -> bytes); before each put, the tenant's
    entries past their TTL are dropped and, while its samples and the new one total more than ``budget_bytes``, its
    oldest are evicted (``SampleBudget``). So Redis holds at most about tenants x ``budget_bytes`` of samples.
    """

    def __init__(self, client: redis.Redis, ttl_s: int | None = None, budget_bytes: int | None = None):
        self.redis = client
        self.ttl_s = int(ttl_s or get_settings().sample_ttl_s)
        self.budget_bytes = int(budget_bytes or get_settings().sample_budget_bytes)
        self.budget = SampleBudget(client, self.ttl_s, self.budget_bytes, self.key)

    @staticmethod
    def key(sample_id: str) -> str:
        return SAMPLE_PREFIX + sample_id

    def put_stored(self, sample: StoredSample, *, caller: KeyGrant = LOCAL) -> str:
        """Keep ``sample``, owned by the caller's tenant; returns its id."""
        self.store(sample, caller=caller)
        return sample.sample_id

    def store(self, sample: StoredSample, *, caller: KeyGrant = LOCAL) -> list[str]:
        """Keep ``sample``, owned by the caller's tenant, after evicting that tenant's oldest samples as its budget
        needs (room is made first, so Redis never holds the new one on top of a full budget); the ids evicted."""
        key = self.key(sample.sample_id)
        fields = {**sample.to_fields(), "tenant": caller.tenant.encode()}
        nbytes = sum(len(v) for v in fields.values())
        evicted = self.budget.make_room(caller.tenant, nbytes)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=hash_mapping(fields))
            pipe.expire(key, self.ttl_s)
            self.budget.record(pipe, caller.tenant, sample.sample_id, nbytes)
            pipe.execute()
        return evicted

    def delete(self, sample_id: str, *, caller: KeyGrant = LOCAL) -> bool:
        """Forget a sample the caller sees; False when unknown, expired, evicted or another tenant's. Only DEL, ZREM and
        HDEL, which Redis runs even when full (maxmemory with noeviction): a client can always free its space."""
        if not _is_sample_id(sample_id):
            return False
        key = self.key(sample_id)
        raw_owner = self.redis.hget(key, "tenant")
        owner = None if raw_owner is None else as_bytes(raw_owner).decode()
        if not self.redis.exists(key) or not caller.sees(owner):
            return False
        # No MULTI: a full Redis refuses every command queued in a transaction, even DEL. The three are idempotent,
        # and an index entry left by a failure in between is dropped by the next put's budget pass.
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(key)
            self.budget.forget(pipe, owner, sample_id)
            removed, _, _ = pipe.execute()
        return bool(removed)

    def absent(self, sample_id: str, *, field: str = "sample_id", caller: KeyGrant = LOCAL) -> Gone | NotFound:
        """Why the caller cannot have the sample: ``Gone`` when it was evicted to keep the caller's tenant within its
        budget, else ``NotFound`` (unknown, expired, or another tenant's: never say which of those)."""
        eviction = self.budget.eviction(sample_id) if _is_sample_id(sample_id) else None
        if eviction is None or not caller.sees(eviction.tenant):
            return NotFound(field, f"no sample {sample_id!r} (unknown or expired)")
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(eviction.at))
        return Gone(
            field,
            f"sample {sample_id!r} was evicted at {when} to keep tenant {eviction.tenant!r} within "
            f"OODSYNTH_SAMPLE_BUDGET_BYTES ({self.budget_bytes} bytes of samples per tenant): newer samples of the "
            "same tenant replaced it; draw it again (POST /sample with the same fit, method, params and seed)",
        )

    def get(self, sample_id: str, *, field: str = "sample_id", caller: KeyGrant = LOCAL) -> StoredSample:
        """The stored sample; ``NotFound`` blaming ``field`` when unknown, expired or not the caller's to see, ``Gone``
        when it was evicted to keep the caller's tenant within its budget."""
        if not _is_sample_id(sample_id):
            raise self.absent(sample_id, field=field, caller=caller)
        key = self.key(sample_id)
        found = read_parts(self.redis, key, SAMPLE_PARTS, fields=["meta", "tenant"])
        if found is not None:
            arrays, plain = found
            meta, owner = plain["meta"], plain["tenant"]
            if meta is not None:
                if not caller.sees(None if owner is None else owner.decode()):
                    raise NotFound(field, f"no sample {sample_id!r} (unknown or expired)")
                return StoredSample.from_fields(meta, arrays)
        kept_by = self.redis.hget(key, "tenant")  # a sample kept as one .npz (stored before tenants: none)
        sees = caller.sees(None if kept_by is None else as_bytes(kept_by).decode())
        data = read_chunks(self.redis, key, "npz") if sees else None
        if data is None:
            raise self.absent(sample_id, field=field, caller=caller)
        return StoredSample.from_bytes(data)

    def exists(self, sample_id: str) -> bool:
        return _is_sample_id(sample_id) and bool(self.redis.exists(self.key(sample_id)))


def _is_sample_id(sample_id: object) -> bool:
    return isinstance(sample_id, str) and bool(_SAMPLE_ID_RE.match(sample_id))
