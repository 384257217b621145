"""An RQ worker that runs only the project's job function.

JSON payloads stop pickle, but RQ still imports and calls whatever a job
names: its ``func`` (``os.system`` works), an ``instance`` to call it on, its
success/failure/stopped callbacks, and it POSTs to the job's webhooks. Anyone
who can write to Redis could use any of these to run code on (or make
requests from) a GPU host. ``AllowlistWorker`` checks every job before RQ
resolves any of those names: a job that is not a plain call of
``oodsynth.queue.enqueue.JOB_FUNCTION`` is failed at once, without retries,
callbacks or webhooks, with the reason as its error text, and nothing of it
is imported or run.
"""

from __future__ import annotations

import logging

from rq import SimpleWorker
from rq.job import Job
from rq.queue import Queue
from rq.worker import WorkerStatus

from ..queue.enqueue import JOB_FUNCTION

log = logging.getLogger(__name__)

ALLOWED_FUNCTIONS = frozenset({JOB_FUNCTION})


class RefusedJobError(Exception):
    """A job that names something other than the allowed job function."""


def refusal_reason(job: Job) -> str | None:
    """Why ``job`` must not run, or None when it is a plain call of an allowed function."""
    try:
        func_name = job.func_name  # deserialises the JSON payload only; nothing is imported
        instance = job.instance
    except Exception as exc:  # an undecodable payload is refused too
        return f"refused: unreadable job payload ({type(exc).__name__})"
    if func_name not in ALLOWED_FUNCTIONS:
        return f"refused: job function {func_name!r} is not allowed; this worker runs only {JOB_FUNCTION}"
    if instance is not None:
        return "refused: jobs must not carry an instance to call the function on"
    callbacks = [
        n
        for n in ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")
        if getattr(job, n, None)
    ]
    if callbacks:
        return f"refused: jobs must not carry callbacks ({', '.join(c.strip('_') for c in callbacks)})"
    if job.webhooks:
        return "refused: jobs must not carry webhooks"
    return None


class AllowlistWorker(SimpleWorker):
    """A non-forking RQ worker that fails, unrun, every job ``refusal_reason`` objects to."""

    def execute_job(self, job: Job, queue: Queue):
        reason = refusal_reason(job)
        if reason is None:
            return super().execute_job(job, queue)
        log.warning("job %s %s", job.id, reason)
        # Strip everything RQ would resolve or call on the failure path before it looks.
        job._success_callback_name = job._failure_callback_name = job._stopped_callback_name = None
        job.webhooks = []
        job.retries_left = 0
        execution = self.prepare_execution(job)
        self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
        self.handle_execution_ended(job, queue, self.job_monitoring_interval)
        self.handle_job_failure(
            job,
            queue,
            started_job_registry=queue.started_job_registry,
            exc_string=f"{RefusedJobError.__name__}: {reason}",
            execution=execution,
        )
        self.set_state(WorkerStatus.IDLE)
