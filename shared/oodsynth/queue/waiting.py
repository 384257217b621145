"""Waiting for decode jobs to end: one polling loop shared by the in-process queue and the HTTP client."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

TERMINAL_JOB_STATES = frozenset({"finished", "failed", "stopped", "canceled"})


def wait_until_terminal(
    status_of: Callable[[str], dict[str, Any]],
    job_ids: Sequence[str],
    *,
    timeout: float | None = None,
    poll_s: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Poll ``status_of(job_id)`` until every job is terminal; ``progress(done_images, total_images)`` after each poll.

    The queue (in-process) and the HTTP client share this loop. Returns the
    final states in ``job_ids`` order; raises ``TimeoutError`` naming the
    unfinished jobs.
    """
    ids = list(dict.fromkeys(job_ids))
    latest: dict[str, dict] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        for job_id in ids:
            if latest.get(job_id, {}).get("status") not in TERMINAL_JOB_STATES:
                latest[job_id] = status_of(job_id)
        if progress is not None:
            counts = [s.get("progress") or {} for s in latest.values()]
            progress(sum(int(c.get("done") or 0) for c in counts), sum(int(c.get("total") or 0) for c in counts))
        pending = [j for j in ids if latest[j].get("status") not in TERMINAL_JOB_STATES]
        if not pending:
            return [latest[j] for j in ids]
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(pending)} of {len(ids)} jobs not finished after {timeout} s: {', '.join(pending[:5])}"
            )
        time.sleep(poll_s)
