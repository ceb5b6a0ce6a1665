"""The S3 store (boto3): manifests are published with a conditional PutObject.

A create-if-absent write sends ``If-None-Match: *``; S3 (and S3-compatible servers that
implement it) answer 412 PreconditionFailed when the key exists, so two publishers can
never both win. Servers that answer 501 NotImplemented get a documented fallback,
head-then-put, which is only safe when one writer publishes an artifact at a time; set
``[caravan] s3_conditional_writes = always`` to refuse the fallback.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import caravan, section, setting
from ..errors import ArtifactNotFoundError, BackendRejected, BackendUnavailable, ConfigurationError
from .base import CHUNK_BYTES, Store, encode_path, root_uri_of

_RETRYABLE_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "ThrottlingException"}


class S3Store(Store):
    """Objects under ``s3://bucket/prefix``."""

    schemes = ("s3",)

    def __init__(self, root_uri: str) -> None:
        super().__init__(root_uri)
        _scheme, bucket, path = root_uri_of(root_uri)
        if not bucket:
            raise ConfigurationError(f"S3 root {root_uri!r} names no bucket; use s3://bucket/prefix")
        self.bucket = bucket
        #: The key prefix, decoded (``s3://b/a%20b`` is the prefix ``a b``, as pyarrow reads it).
        self.base = path.strip("/")
        self.root_uri = f"s3://{bucket}/{encode_path(self.base)}" if self.base else f"s3://{bucket}"
        config = section(caravan)
        import boto3  # imported here so that `import caravan` stays cheap without S3

        endpoint = setting("AWS_ENDPOINT_URL_S3", setting("AWS_ENDPOINT_URL", config.s3_endpoint_url)) or None
        from ..secrets import get_secret

        # Keys from the secret source (AWS_* env, or Vault); none given = boto3's own chain (instance roles).
        key_id = get_secret("storage", "aws_access_key_id")
        secret_key = get_secret("storage", "aws_secret_access_key") if key_id else None
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, aws_access_key_id=key_id if secret_key else None,
            aws_secret_access_key=secret_key)
        self.client.meta.events.register("before-send.s3.*", self._on_send)
        self.conditional = config.s3_conditional_writes

    def _on_send(self, request: Any = None, **_: Any) -> None:
        self._count(getattr(request, "method", "HTTP"))

    def _key(self, key: str) -> str:
        return f"{self.base}/{key}" if self.base else key

    def _error(self, exc: Exception, what: str, key: str) -> Exception:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"{what} {self.uri(key)}"
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if status >= 500 or status == 429 or code in _RETRYABLE_CODES:
                return BackendUnavailable(f"{where}: {code} ({status})", backend="s3")
            return BackendRejected(f"{where}: {code} ({status})", backend="s3")
        if isinstance(exc, BotoCoreError):
            return BackendUnavailable(f"{where}: {exc}", backend="s3")
        return exc

    @contextlib.contextmanager
    def _getting(self, key: str) -> Iterator[None]:
        """A GET of ``key``: a missing object is ArtifactNotFoundError, any other failure the store's error."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ArtifactNotFoundError("no such object", artifact=key, store=self.root_uri) from exc
            raise self._error(exc, "GET", key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "GET", key) from exc

    def read(self, key: str) -> bytes:
        with self._getting(key):
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            return body

    def write(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "PUT", key) from exc

    def write_file(self, key: str, path: Path) -> None:
        """One PUT of the open file up to :data:`CHUNK_BYTES`, a multipart upload above it.

        A multipart object appears only when the upload is completed, whole, so readers never see part of
        it (as with a PUT); a failed upload is aborted, leaving nothing behind. One part in memory at a time.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        size = Path(path).stat().st_size
        name = self._key(key)
        try:
            with open(path, "rb") as handle:
                if size <= CHUNK_BYTES:
                    self.client.put_object(Bucket=self.bucket, Key=name, Body=handle.read())
                    return
                upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
                try:
                    parts: list[Any] = []
                    for number, chunk in enumerate(iter(lambda: handle.read(CHUNK_BYTES), b""), start=1):
                        answer = self.client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload,
                                                         PartNumber=number, Body=chunk)
                        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                    self.client.complete_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload,
                                                          MultipartUpload={"Parts": parts})
                except BaseException:
                    try:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
                    except (ClientError, BotoCoreError):
                        pass  # the upload's own error is the one to report; S3 lifecycle rules expire the parts
                    raise
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "PUT (multipart)", key) from exc

    def read_chunks(self, key: str) -> Iterator[bytes]:
        with self._getting(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            with body:
                yield from body.iter_chunks(CHUNK_BYTES)

    def create(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if self.conditional == "never":
            return self._create_unconditionally(key, data)
        for attempt in range(5):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
                return True
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "PreconditionFailed":
                    return False
                if code == "ConditionalRequestConflict":
                    # Another conditional write of this key is in flight; its outcome decides ours.
                    time.sleep(0.05 * (attempt + 1))
                    continue
                if code == "NotImplemented" and self.conditional == "auto":
                    return self._create_unconditionally(key, data)
                raise self._error(exc, "PUT If-None-Match", key) from exc
            except BotoCoreError as exc:
                raise self._error(exc, "PUT If-None-Match", key) from exc
        raise BackendUnavailable(f"PUT If-None-Match {self.uri(key)}: "
                                 "conditional write kept conflicting", backend="s3")

    def _create_unconditionally(self, key: str, data: bytes) -> bool:
        if self.exists(key):
            return False
        self.write(key, data)
        return True

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(exc, "HEAD", key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "HEAD", key) from exc

    def list_keys(self, prefix: str) -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        strip = len(self._key(""))
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for item in page.get("Contents", []):
                    yield item["Key"][strip:]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "LIST", prefix) from exc

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "DELETE", key) from exc

    def delete_prefix(self, prefix: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        keys = [self._key(k) for k in self.list_keys(prefix)]
        try:
            for start in range(0, len(keys), 1000):
                batch: list[Any] = [{"Key": k} for k in keys[start:start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "DELETE", prefix) from exc
