"""Named fits kept in Redis, so every API replica, CLI and worker sees the same ones.

A fit is stored as the density's own ``to_bytes()``, the feature bank's
``to_bytes()`` and the summary JSON, in one Redis hash ``oodsynth:fit:<name>``
together with a random ``version``. Decoding a large bank is slow, so each
process keeps decoded fits in a small cache keyed by that version: a request
costs one ``HGET`` while the fit is unchanged, and a refit under the same name
(a new version) is picked up by every replica on its next request.

Redis caps one value at 512 MB; blobs are split across hash fields (``blobs.py``) so large banks still fit.

The hash's ``tenant`` field names the tenant that created the fit (none: stored before tenants, so ``default``);
a caller that does not see it (``KeyGrant.sees``) is told the fit does not exist. Fit names stay one namespace
for every tenant: per-tenant names would change every key and the cache, so a name another tenant holds is
refused as taken (409), which says no more than that the name is in use.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from ..api_keys import LOCAL, KeyGrant
from ..bank import FeatureBank, load_bank
from ..errors import Conflict, NotFound
from ..names import is_valid_name, normalize_name, validate_name
from .blobs import as_bytes, chunk_fields, hash_mapping, read_chunks, to_json

if TYPE_CHECKING:  # imported lazily at run time: the densities pull in scipy/torch
    from ..densities import ClassDensities

FIT_PREFIX = "oodsynth:fit:"
FIT_INDEX = "oodsynth:fits"


def fit_exists_error(name: str, *, own: bool = True) -> Conflict:
    if not own:  # another tenant's: the name is taken, and says nothing else about the fit
        return Conflict("name", f"a fit named {name!r} already exists and is not yours to replace; choose another name")
    return Conflict("name", f"a fit named {name!r} already exists (replace it with replace=true / --replace)")


def _owner(raw: bytes | str | None) -> str | None:
    return None if raw is None else as_bytes(raw).decode()


def validate_fit_name(name: str) -> str:
    """Fit names follow the one naming rule (``names.validate_name``), like dataset names."""
    return validate_name("name", name)


@dataclass
class _CachedFit:
    version: str
    fit: ClassDensities
    bank: FeatureBank


class FitCache:
    """Decoded fits by (Redis server, name), least recently used dropped first.

    One rule invalidates an entry: its stored ``version`` changed (a refit or
    delete anywhere). The API keeps one on ``app.state``; a CLI run needs none.
    """

    def __init__(self, size: int = 4):  # decoded banks can be ~150 MB each
        self.size = size
        self._entries: OrderedDict[tuple[str, str], _CachedFit] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], version: str) -> _CachedFit | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit.version != version:
                return None
            self._entries.move_to_end(key)
            return hit

    def put(self, key: tuple[str, str], entry: _CachedFit) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def drop(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._entries.pop(key, None)


class FitRegistry:
    """Named class-density fits with their banks, shared through Redis.

    ``put`` writes atomically (one ``MULTI``), ``get`` returns the decoded
    ``(fit, bank)`` from ``cache`` when its version is current.
    """

    def __init__(self, client: redis.Redis, *, cache: FitCache | None = None):
        """``cache``: share one across registries (the API's ``app.state``); a private one otherwise."""
        self.redis = client
        self.cache = cache if cache is not None else FitCache()
        # Cache entries are per server: two Redis servers may hold the same name.
        kw = client.connection_pool.connection_kwargs
        self._server = str(kw.get("path") or f"{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}")

    @staticmethod
    def key(name: str) -> str:
        return FIT_PREFIX + normalize_name(name)  # one key for a composed and a decomposed spelling

    def put(
        self, name: str, fit: ClassDensities, bank: FeatureBank, *, replace: bool = True, caller: KeyGrant = LOCAL
    ) -> dict:
        """Store ``fit`` and ``bank`` under ``name``, owned by the caller's tenant; returns the stored summary.

        With ``replace=False`` an existing name raises ``Conflict`` (checked
        atomically with WATCH, so two concurrent creators cannot both win), and so does
        a fit the caller does not see. A replaced fit keeps its owner.
        """
        name = validate_fit_name(name)
        version = uuid.uuid4().hex
        summary = {
            "name": name,
            "version": version,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "n_bank": int(bank.features.shape[0]),
            **fit.summary(),
        }
        fields: dict[str, bytes] = {
            "version": version.encode(),
            "summary": to_json(summary).encode(),
            **chunk_fields("fit", fit.to_bytes()),
            **chunk_fields("bank", bank.to_bytes()),
        }
        key = self.key(name)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    owner: str | None = caller.tenant
                    if pipe.exists(key):
                        owner = _owner(pipe.hget(key, "tenant"))  # a replaced fit keeps its owner
                        if not replace or not caller.sees(owner):
                            raise fit_exists_error(name, own=caller.sees(owner))
                    pipe.multi()
                    pipe.delete(key)
                    owned = fields if owner is None else {**fields, "tenant": owner.encode()}  # None: default's
                    pipe.hset(key, mapping=hash_mapping(owned))
                    pipe.sadd(FIT_INDEX, name)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.cache.put((self._server, name), _CachedFit(version, fit, bank))
        return summary

    def exists(self, name: str) -> bool:
        return is_valid_name(name) and bool(self.redis.exists(self.key(name)))

    def _fields(self, name: str, caller: KeyGrant, *fields: str) -> list | None:
        """The hash's ``fields`` when the fit exists and the caller sees it, else None."""
        if not is_valid_name(name):
            return None
        *values, owner = self.redis.hmget(self.key(name), [*fields, "tenant"])
        return values if values[0] is not None and caller.sees(_owner(owner)) else None

    def sees(self, name: str, caller: KeyGrant) -> bool:
        """Does the fit exist for this caller (its own tenant's, or any for admin)?"""
        return self._fields(name, caller, "version") is not None

    def get(self, name: str, *, field: str = "fit", caller: KeyGrant = LOCAL) -> tuple[ClassDensities, FeatureBank]:
        """The decoded ``(fit, bank)``; ``NotFound`` blaming ``field`` when there is no such fit for the caller."""
        from ..densities import ClassDensities

        missing = NotFound(field, f"no fit named {name!r}")
        found = self._fields(name, caller, "version")
        if found is None:
            raise missing
        key, version = self.key(name), found[0]
        hit = self.cache.get((self._server, name), as_bytes(version).decode())
        if hit is not None:
            return hit.fit, hit.bank
        for _ in range(3):  # a refit may land between reads; retry on a torn read
            version_b = self.redis.hget(key, "version")
            if version_b is None:
                raise missing
            fit_bytes = read_chunks(self.redis, key, "fit")
            bank_bytes = read_chunks(self.redis, key, "bank")
            if fit_bytes is None or bank_bytes is None or self.redis.hget(key, "version") != version_b:
                continue
            fit = ClassDensities.from_bytes(fit_bytes)
            bank = load_bank(bank_bytes, min_per_class=1)
            self.cache.put((self._server, name), _CachedFit(as_bytes(version_b).decode(), fit, bank))
            return fit, bank
        raise missing

    def version(self, name: str) -> str:
        """The current version (an etag); ``NotFound`` when absent."""
        v = self.redis.hget(self.key(name), "version") if is_valid_name(name) else None
        if v is None:
            raise NotFound("fit", f"no fit named {name!r}")
        return as_bytes(v).decode()

    def summary(self, name: str, *, field: str = "fit", caller: KeyGrant = LOCAL) -> dict:
        """The JSON summary stored with the fit, without decoding the arrays; ``NotFound`` when absent."""
        found = self._fields(name, caller, "summary")
        if found is None:
            raise NotFound(field, f"no fit named {name!r}")
        return json.loads(found[0])

    def list(self, caller: KeyGrant = LOCAL) -> list[str]:
        """The names of the fits the caller sees."""
        names = sorted(as_bytes(n).decode() for n in self.redis.smembers(FIT_INDEX))
        # Drop index entries whose hash vanished (e.g. a flushed key), so list() never lies.
        with self.redis.pipeline(transaction=False) as pipe:
            for n in names:
                pipe.hmget(self.key(n), ["version", "tenant"])
            found = pipe.execute()
        gone = [n for n, (version, _) in zip(names, found) if version is None]
        if gone:
            self.redis.srem(FIT_INDEX, *gone)
        return [n for n, (version, owner) in zip(names, found) if version is not None and caller.sees(_owner(owner))]

    def delete(self, name: str) -> bool:
        if not is_valid_name(name):
            return False
        # No MULTI: a full Redis (maxmemory, noeviction) refuses every command queued in a transaction, even DEL,
        # and deleting is how space is freed. Both commands are idempotent; a retry finishes a half-done delete.
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.key(name))
            pipe.srem(FIT_INDEX, name)
            removed, _ = pipe.execute()
        self.cache.drop((self._server, name))
        return bool(removed)
