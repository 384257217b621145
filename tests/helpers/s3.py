"""A moto S3 server (server mode, on 127.0.0.1) and a fresh bucket per test, as pytest fixtures.

Endpoint and credentials reach s3fs through the standard AWS_* variables, as they do in compose (MinIO) and on GPU
hosts; worker processes inherit them. tests/conftest.py loads this module as a plugin, so every test may ask for
``bucket_url``; moto is imported only when one does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def s3_endpoint():
    """One moto S3 server for the session, on a free port of 127.0.0.1."""
    from moto import server as moto_server  # the test extra pins moto[server]; s3fs comes with the s3 extra

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket_url(s3_endpoint, monkeypatch, tmp_path) -> Iterator[str]:
    """A fresh bucket per test, as ``s3://<bucket>/runs``, with the AWS_* variables pointing at moto."""
    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        # hermetic: no profile or credentials file of this machine is read
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(key, value)
    import fsspec
    import s3fs

    # fsspec caches filesystem instances by their arguments, and an S3 one keeps the endpoint of the environment it
    # was made in: a test that pointed AWS_ENDPOINT_URL elsewhere (an unreachable store) would hand its dead
    # endpoint to every later test that makes the same filesystem.
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"oodsynth-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", use_listings_cache=False).mkdir(bucket)
    yield f"s3://{bucket}/runs"
    s3fs.S3FileSystem.clear_instance_cache()
