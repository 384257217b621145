"""The RQ job function: decode one ``DecodeJob`` payload into stored images.

Jobs are plain JSON (RQ's JSONSerializer), so the payload is validated again
here. A payload that can never succeed (validation error, another model, a
vector dimension the model does not take) fails at once: its job's retries
are zeroed before it raises, so RQ puts it in the failed registry with the
error text instead of retrying it with back-off.
The job is idempotent: image ids already in the store are skipped, so a retry
after a killed worker only decodes what is missing, and two workers racing on
one image leave one file and one manifest row (the store decides).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydantic
from rq import get_current_job

from oodsynth.config import get_settings
from oodsynth.decoding import OutlierDecoder
from oodsynth.jobs import DecodeItem, DecodeJob
from oodsynth.store import ImageRecord, ResultStore

log = logging.getLogger(__name__)

# One loaded pipeline per worker process, keyed by model. Only one is kept: a GPU
# holds one SD pipeline comfortably, two may not fit.
_DECODERS: dict[str, OutlierDecoder] = {}


def get_decoder(model: str | None = None) -> OutlierDecoder:
    """The process-wide decoder for ``model`` (default: settings.model), loaded on first use."""
    settings = get_settings()
    model = str(model or settings.model)
    if model not in _DECODERS:
        if _DECODERS:
            _DECODERS.clear()
            gc.collect()
            _empty_cuda_cache()
        log.info("loading pipeline %s", model)
        import torch

        on_cuda = (settings.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        speedups = settings.worker_compile and on_cuda  # compile is not worth it on CPU
        _DECODERS[model] = OutlierDecoder(
            model, device=settings.device, n_slots=settings.gpu_batch_size, fuse_qkv=speedups, compile_unet=speedups
        )
    return _DECODERS[model]


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _batches(items: Sequence[DecodeItem], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _record(job: DecodeJob, item: DecodeItem, job_id: str | None) -> ImageRecord:
    return ImageRecord(
        **item.model_dump(exclude={"vector"}),
        model=job.model,
        # The placeholder stands for this image's own vector, an outlier of its class.
        prompt=job.prompt(f"<outlier:{item.class_name}>"),
        job_id=job_id,
    )


def _disable_retries() -> None:
    """Zero the current RQ job's retries, so the exception about to be raised fails it for good.

    RQ (3.x) decides in ``Worker.handle_job_failure`` from ``job.should_retry``
    (``retries_left > 0``) on the very Job object that ``get_current_job()``
    returns, in the process that ran the job; so the job lands in the failed
    registry after this one attempt, with the exception text. The field is
    also written to Redis, so anything that reloads the job sees no retries left.
    """
    rq_job = get_current_job()
    if rq_job is None or not rq_job.retries_left:
        return
    rq_job.retries_left = 0
    try:
        rq_job.connection.hset(rq_job.key, "retries_left", 0)
    except Exception:  # the in-memory value is what the worker reads; Redis is best effort
        log.exception("job %s: could not persist retries_left=0", rq_job.id)


def decode_job(payload: dict) -> dict:
    """Decode the payload's images that the store lacks; return every image path of the job.

    Returns ``{"images": [paths relative to the store root, one per item, in
    item order], "written": n, "skipped": k}``, where ``skipped`` counts the
    images that were already stored (earlier attempt, or another worker).
    """
    try:
        job = DecodeJob.model_validate(payload)
    except pydantic.ValidationError:
        _disable_retries()
        raise
    settings = get_settings()
    # A worker serves the model it was started with: a payload must not make it load
    # (and maybe unpickle) arbitrary weights, which is what JSON-only jobs guard against.
    if not _same_model(job.model, settings.model):
        _disable_retries()
        raise ValueError(f"model: job asks for {job.model!r} but this worker serves {settings.model!r}")
    store = ResultStore(settings.store)
    rq_job = get_current_job()
    job_id = rq_job.id if rq_job is not None else None

    stored = store.stored_ids(job.dataset)
    todo = [item for item in job.items if item.image_id not in stored]
    skipped = len(job.items) - len(todo)
    done = skipped

    def report() -> None:
        if rq_job is not None:
            rq_job.meta["progress"] = {"done": done, "total": len(job.items)}
            rq_job.save_meta()

    report()
    written = 0
    if todo:
        decoder = get_decoder(settings.model)
        dim = len(job.items[0].vector)
        if dim != decoder.hidden_size:
            _disable_retries()
            raise ValueError(f"items: vectors have dimension {dim} but {job.model!r} takes {decoder.hidden_size}")
        for batch in _batches(todo, settings.gpu_batch_size):
            images = decoder.decode(
                np.asarray([item.vector for item in batch], dtype=np.float32),
                [item.seed for item in batch],
                **job.decode_settings(),
            )
            for item, image in zip(batch, images):
                if store.write_image(job.dataset, _record(job, item, job_id), image):
                    written += 1
                else:  # another worker stored it meanwhile
                    skipped += 1
            done += len(batch)
            report()
            log.info("job %s: %d/%d images", job_id, done, len(job.items))
    paths = [store.relative_path(job.dataset, item.class_name, item.image_id) for item in job.items]
    return {"images": paths, "written": written, "skipped": skipped}
