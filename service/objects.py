"""Uploads, masks and overlays in an S3-compatible bucket (the scaled-out shape).

With `objects` set, the Redis store keeps only records and queues; the bytes go here
(MinIO beside the service in docker-compose.yml and k8s/, any S3 in production). Keys,
under the configured prefix:

  uploads/<ab>/<frame_id><ext>                the upload (.jpg or .png)
  results/<ab>/<frame_id>/<token>/<name>      mask.png, overlay.jpg, maps.png

`<ab>` is the frame id's first two characters (listings stay short); `<token>` is drawn
by the attempt that stores the files, so a second worker ending the same frame (after a
takeover) never overwrites the first one's files: the store keeps the token of the
attempt that won and the loser deletes its own.

What to delete and when is kept in Redis beside the records (service/store_redis.py:
the `objects` sorted set), and deleted by the store's purge: S3 lifecycle rules count
whole days, and an upload of a clean frame is kept an hour. Credentials come from the
usual AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or the host's role.
"""

from __future__ import annotations

import contextlib
import mimetypes
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.settings import ObjectStoreSettings

DELETE_BATCH = 1000
"""S3's DeleteObjects takes at most this many keys."""


class ObjectStoreError(RuntimeError):
    """The bucket cannot be used; the message names it and says why."""


def upload_key(frame_id: str, ext: str) -> str:
    """Where a frame's upload is kept (under the prefix); `ext` with its dot."""
    return f"uploads/{frame_id[:2]}/{frame_id}{ext}"


def result_key(frame_id: str, token: str, name: str) -> str:
    """Where one of a frame's result files is kept (under the prefix)."""
    return f"results/{frame_id[:2]}/{frame_id}/{token}/{name}"


class ObjectStore:
    """A bucket (and a key prefix in it) through boto3's S3 client."""

    @classmethod
    def of(cls, s: ObjectStoreSettings) -> ObjectStore:
        """The bucket the settings name."""
        return cls(s.bucket, s.prefix, s.endpoint_url, s.region)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        # fail fast while the bucket is away (the API answers 503), a few retries for blips
        config = Config(
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        self.s3: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def check(self) -> None:
        """Raise ObjectStoreError unless the bucket exists and answers."""
        with self._named():
            self.s3.head_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        """Write an object (whole; S3 never shows half of one)."""
        kind = mimetypes.guess_type(key)[0] or "application/octet-stream"
        with self._named():
            self.s3.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=kind
            )

    def get(self, key: str) -> bytes | None:
        """An object's bytes, or None when there is none."""
        with self._named():
            try:
                reply = self.s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return bytes(reply["Body"].read())

    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects (missing ones are fine), a thousand per request."""
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == DELETE_BATCH:
                self._delete(batch)
                batch = []
        if batch:
            self._delete(batch)

    def _delete(self, keys: list[str]) -> None:
        with self._named():
            reply = self.s3.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self.prefix + k} for k in keys], "Quiet": True},
            )
        if reply.get("Errors"):
            first = reply["Errors"][0]
            raise ObjectStoreError(
                f"bucket {self.bucket}: {len(reply['Errors'])} objects not deleted "
                f"({first.get('Key')}: {first.get('Code')})"
            )

    def listed(self, under: str = "") -> list[str]:
        """The keys below `under`, without the prefix (for tests and inspection)."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + under
        )
        n = len(self.prefix)
        with self._named():
            return [o["Key"][n:] for page in pages for o in page.get("Contents", [])]

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        """The client's errors as ObjectStoreError, naming the bucket."""
        try:
            yield
        except (ClientError, BotoCoreError) as err:
            raise ObjectStoreError(f"bucket {self.bucket}: {err}") from err
