"""The S3 client, created on first use: importing boto3 costs ~300 ms of cold start."""

from __future__ import annotations

from typing import Any


class LazyS3Client:
    """Gives a class an ``s3`` client built on first use (boto3's standard settings and endpoint)."""

    _client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client
