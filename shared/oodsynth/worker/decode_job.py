"""Running one decode job: payload -> stored images. The queue's job function lives here.

Jobs are plain JSON (RQ's JSONSerializer), so the payload is validated again.
A payload that can never succeed (validation error, another model, a vector
dimension the model does not take) raises ``InputError``; ``decode_task``
zeroes its RQ job's retries first, so RQ puts it in the failed registry with
the error text instead of retrying it with back-off.

The job is idempotent: image ids already in the store are skipped, so a retry
after a killed worker only decodes what is missing, and two workers racing on
one image leave one file and one manifest row (the store decides).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydantic

from ..batching import batches
from ..config import Settings, get_settings
from ..errors import InputError
from ..queue.payloads import DecodeItem, DecodeJob, check_job_limits
from ..store.results import ImageRecord, ResultStore
from .init_images import load_init_images

if TYPE_CHECKING:  # torch and diffusers load with the first decoder, not on import
    from ..decoding.pipeline import OutlierDecoder

log = logging.getLogger(__name__)


class DecoderCache:
    """The loaded SD pipeline of this process, for the configured model.

    One rule invalidates it: a different model (or batch size, device)
    replaces it. Only one is kept: a GPU holds one SD pipeline comfortably,
    two may not fit.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._decoder: OutlierDecoder | None = None
        self._lock = threading.Lock()

    def get(self, settings: Settings) -> OutlierDecoder:
        from ..decoding.pipeline import OutlierDecoder
        from ..device import default_device

        device = str(settings.device or default_device())
        key = (str(settings.model), device, settings.gpu_batch_size, settings.worker_compile)
        with self._lock:
            if self._key == key and self._decoder is not None:  # a known key has its decoder (set before the key)
                return self._decoder
            self.clear()
            log.info("loading pipeline %s", settings.model)
            speedups = settings.worker_compile and device.startswith("cuda")  # compile is not worth it on CPU
            decoder = self._decoder = OutlierDecoder(
                settings.model,
                device=device,
                n_slots=settings.gpu_batch_size,
                fuse_qkv=speedups,
                compile_unet=speedups,
            )
            self._key = key
            return decoder

    def clear(self) -> None:
        if self._decoder is None:
            return
        self._decoder, self._key = None, None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


DECODERS = DecoderCache()  # the worker process's one pipeline


def same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def decode_fields(job: DecodeJob, decoder: OutlierDecoder) -> dict:
    """The manifest's ``decode`` field: the preset and what it ran (solver, steps, reuse), sizes and guidance."""
    return {
        **decoder.plan(job.preset, job.steps, job.scheduler),
        "guidance_scale": job.guidance_scale,
        "height": job.height,
        "width": job.width,
        "output_size": job.output_size,
    }


def _record(job: DecodeJob, item: DecodeItem, job_id: str | None, decode: dict) -> ImageRecord:
    if job.init_images is not None:  # img2img: which real image it started from, and how far it was noised
        decode = {**decode, "init_image": item.init_image, "strength": job.strength}
    return ImageRecord(
        **item.model_dump(exclude={"vector", "init_image"}),
        model=job.model,
        decode=decode,
        # The placeholder stands for this image's own vector, an outlier of its class.
        prompt=job.prompt(f"<outlier:{item.class_name}>"),
        job_id=job_id,
        tenant=job.tenant,
    )


def run_decode_job(
    payload: dict,
    settings: Settings,
    decoders: DecoderCache,
    *,
    job_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Decode the payload's images that the store lacks; return every image path of the job.

    Returns ``{"images": [paths relative to the store root, one per item, in
    item order], "written": n, "skipped": k}``, where ``skipped`` counts the
    images that were already stored (earlier attempt, or another worker).
    ``InputError`` means the payload can never succeed on this worker.
    """
    try:
        job = DecodeJob.model_validate(payload)
    except pydantic.ValidationError as exc:
        raise InputError.from_pydantic(exc) from exc
    check_job_limits(job, settings)  # the API's caps, again: a payload may have been written straight to Redis
    # A worker serves the model it was started with: a payload must not make it load
    # (and maybe unpickle) arbitrary weights, which is what JSON-only jobs guard against.
    if not same_model(job.model, settings.model):
        raise InputError("model", f"job asks for {job.model!r} but this worker serves {settings.model!r}")
    store = ResultStore(settings.store)
    stored = store.stored_ids(job.dataset)
    todo = [item for item in job.items if item.image_id not in stored]
    skipped = done = len(job.items) - len(todo)
    report = progress or (lambda done, total: None)
    report(done, len(job.items))
    written = 0
    if todo:
        from ..decoding.verification import VERIFIER

        decoder = decoders.get(settings)
        dim = len(job.items[0].vector)
        if dim != decoder.hidden_size:
            raise InputError("items", f"vectors have dimension {dim} but {job.model!r} takes {decoder.hidden_size}")
        decode = decode_fields(job, decoder)
        for batch in batches(todo, settings.gpu_batch_size):
            images = decoder.decode(
                np.asarray([item.vector for item in batch], dtype=np.float32),
                [item.seed for item in batch],
                **job.decode_settings(),
                init_images=load_init_images(job, batch, store),
            )
            verified = VERIFIER.fields(settings, job.verify_fit, images)  # None: this worker/job does not verify
            records = [_record(job, item, job_id, decode) for item in batch]
            if verified is not None:
                for record, fields in zip(records, verified):
                    record.diagnostics.update(fields)
            # One shard write per batch (write_images), not one rewrite of the shard per image.
            created = store.write_images(job.dataset, list(zip(records, images)))
            written += sum(created)
            skipped += len(created) - sum(created)  # another worker stored those meanwhile
            done += len(batch)
            report(done, len(job.items))
            log.info("job %s: %d/%d images", job_id, done, len(job.items))
    paths = [store.relative_path(job.dataset, item.class_name, item.image_id) for item in job.items]
    return {"images": paths, "written": written, "skipped": skipped}


def decode_task(payload: dict) -> dict:
    """The queue's job function (``oodsynth.queue.enqueue.JOB_FUNCTION``): RQ in, ``run_decode_job`` out.

    Progress goes to the RQ job's meta; a permanent error zeroes the job's
    retries before it is raised, so RQ fails it after this one attempt.
    """
    from rq import get_current_job

    rq_job = get_current_job()

    def progress(done: int, total: int) -> None:
        if rq_job is not None:
            rq_job.meta["progress"] = {"done": done, "total": total}
            rq_job.save_meta()

    try:
        return run_decode_job(
            payload, get_settings(), DECODERS, job_id=rq_job.id if rq_job is not None else None, progress=progress
        )
    except InputError:
        if rq_job is not None:
            _disable_retries(rq_job)
        raise


def _disable_retries(rq_job) -> None:
    """Zero the RQ job's retries, so the exception about to be raised fails it for good.

    RQ (3.x) decides in ``Worker.handle_job_failure`` from ``job.should_retry``
    (``retries_left > 0``) on the very Job object that ``get_current_job()``
    returns, in the process that ran the job; so the job lands in the failed
    registry after this one attempt, with the exception text. The field is
    also written to Redis, so anything that reloads the job sees no retries left.
    """
    if not rq_job.retries_left:
        return
    rq_job.retries_left = 0
    try:
        rq_job.connection.hset(rq_job.key, "retries_left", 0)
    except Exception:  # the in-memory value is what the worker reads; Redis is best effort
        log.exception("job %s: could not persist retries_left=0", rq_job.id)
