"""Session fixtures built once for a whole pytest-xdist run instead of once per worker.

pytest-xdist's documented pattern ("making session-scoped fixtures execute only once"): every worker of one run
shares the parent of its own base temp folder, so the first worker builds into a folder there, under a file lock
(filelock, which torch already brings), and the others find it built. Without xdist it is an ordinary temp folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


@contextmanager
def folder_built_once(tmp_path_factory, worker_id: str, name: str) -> Iterator[Path]:
    """A folder ``name`` that one worker at a time fills; whoever comes later finds what the first one built."""
    if worker_id == "master":  # no xdist: this session is the only one
        yield tmp_path_factory.mktemp(name)
        return
    folder = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{folder}.lock"):
        folder.mkdir(exist_ok=True)
        yield folder
