"""A shared object store every replica of a cluster reaches: one small interface, two backends.

``open_store(url)`` picks the backend by the URL's scheme:

* ``file:///abs/dir`` → ``LocalObjectStore``: a directory every replica mounts (NFS, a
  shared disk). Keys are relative paths; ``put`` writes a temporary file, fsyncs and
  renames it; ``put_new`` links the temporary file to its name, which the file system
  refuses atomically when the name exists.
* ``s3://bucket/prefix`` → ``S3ObjectStore`` through boto3. The endpoint comes from
  ``?endpoint_url=http://host:port`` or the standard ``AWS_ENDPOINT_URL``; credentials
  and region the standard boto3 way. ``put_new`` is ``put_object(IfNoneMatch="*")``
  (S3's conditional write, also honoured by moto 5.2, MinIO and R2).

boto3 rather than s3fs or obstore: it is the reference client (what S3, MinIO and moto are
tested against), exposes conditional writes directly (``IfNoneMatch``) and is already in the
cluster extra; one thread moves 8 MiB objects to moto on loopback at ~130-170 MiB/s put and
~540-750 MiB/s get (``scripts/measure_store.py``, 2-core machine), far above what one
session's checkpoints write, so a faster client would not show.

The interface is what the session mirror (``mirror.py``) needs, nothing more: whole-object
writes, a create-only write for commits, reads, sorted listing and batch deletes.
"""

from __future__ import annotations

import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ConfigError, StreamVLMError
from .disk import fsync_dir

__all__ = [
    "LocalObjectStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectStoreError",
    "S3ObjectStore",
    "open_store",
]

URL_HELP = "use file:///path or s3://bucket/prefix"
_TMP_PREFIX = ".tmp-"  # temporary files of LocalObjectStore; never listed
_S3_DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes


class ObjectStoreError(StreamVLMError):
    """The shared object store could not be read or written."""


class ObjectNotFoundError(ObjectStoreError):
    """An object the caller expected is not in the store."""


class ObjectStore(ABC):
    """Objects (bytes) under string keys such as ``sessions/abc/manifests/000000000001.json``.

    Keys are ``/``-separated, relative, without empty, ``.`` or ``..`` parts. Writes are
    whole objects: a reader sees an object entirely or not at all.
    """

    url: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write (or overwrite) the object ``key``."""

    @abstractmethod
    def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent, atomically: ``False`` (and nothing written) if it exists."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes of ``key``; ``ObjectNotFoundError`` if there is no such object."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``, sorted."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove ``keys``; keys that do not exist are ignored."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def open_store(url: str) -> ObjectStore:
    """The store at ``url``: ``file:///abs/dir`` or ``s3://bucket/prefix[?endpoint_url=...]``."""
    if url.startswith("file://"):
        return LocalObjectStore(url)
    if url.startswith("s3://"):
        return S3ObjectStore(url)
    raise ConfigError(f"store URL {url!r}: {URL_HELP}")


def check_key(key: str) -> str:
    """``key`` if it is a valid key (see ``ObjectStore``); ``ObjectStoreError`` otherwise."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or any(p in ("", ".", "..") or p.startswith(_TMP_PREFIX) for p in parts)
    ):
        raise ObjectStoreError(f"invalid object key {key!r}: use a relative path like 'a/b/c'")
    return key


# ----------------------------------------------------------------------------- file://


class LocalObjectStore(ObjectStore):
    """Objects as files under one directory (a shared mount); see the module docstring."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"store URL {url!r}: {URL_HELP} (an absolute path)")
        self.url = url
        self.root = Path(unquote(parts.path))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ObjectStoreError(f"cannot create the store directory {self.root}: {e.strerror}") from e

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_tmp(self, path: Path, data: bytes) -> Path:
        """A fsynced temporary file beside ``path`` holding ``data`` (parents created)."""
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
        for attempt in (0, 1):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                return tmp
            except FileNotFoundError:
                if attempt:  # a concurrent delete removed the (empty) parent twice in a row
                    raise
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            tmp = self._write_tmp(path, data)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as e:
            raise ObjectStoreError(f"cannot write {path}: {e.strerror}; check the shared directory") from e

    def put_new(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            tmp = self._write_tmp(path, data)
            try:
                os.link(tmp, path)  # fails, atomically, when the name exists (also over NFS)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            fsync_dir(path.parent)
            return True
        except OSError as e:
            raise ObjectStoreError(f"cannot write {path}: {e.strerror}; check the shared directory") from e

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from None
        except OSError as e:
            raise ObjectStoreError(f"cannot read {path}: {e.strerror}; check the shared directory") from e

    def list(self, prefix: str) -> list[str]:
        # walk only the deepest directory the prefix names entirely
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        keys = []
        for dirpath, _, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if not name.startswith(_TMP_PREFIX):
                    key = name if rel == "." else f"{rel}/{name}"
                    if key.startswith(prefix):
                        keys.append(key.replace(os.sep, "/"))
        return sorted(keys)

    def delete(self, keys: Iterable[str]) -> None:
        parents = set()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise ObjectStoreError(
                    f"cannot delete {path}: {e.strerror}; check the shared directory"
                ) from e
            parents.add(path.parent)
        # empty directories would pile up (one per session and writer): remove them, deepest first
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            while parent != self.root:
                try:
                    parent.rmdir()
                except OSError:  # not empty (or already gone): its ancestors are not empty either
                    break
                parent = parent.parent


# ------------------------------------------------------------------------------- s3://


class S3ObjectStore(ObjectStore):
    """Objects in an S3 bucket under a prefix, through boto3; see the module docstring."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"store URL {url!r}: {URL_HELP}")
        query = parse_qs(parts.query)
        unknown = set(query) - {"endpoint_url"}
        if unknown:
            raise ConfigError(f"store URL {url!r}: unknown option {sorted(unknown)[0]!r}; only endpoint_url=")
        self.url = url
        self.bucket = parts.netloc
        prefix = parts.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self._endpoint_url = query.get("endpoint_url", [None])[0]  # None: boto3 reads AWS_ENDPOINT_URL
        self._s3 = None
        self._client_lock = threading.Lock()

    @property
    def _client(self):
        # one client for every thread: boto3 clients are thread-safe (sessions are not), and
        # making one costs ~0.1 s of loading service models
        with self._client_lock:
            if self._s3 is None:
                import boto3
                from botocore.config import Config

                config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=16)
                session = boto3.session.Session()
                self._s3 = session.client("s3", endpoint_url=self._endpoint_url, config=config)
            return self._s3

    def _error(self, action: str, key: str, e: Exception) -> ObjectStoreError:
        detail = _error_code(e) or type(e).__name__
        return ObjectStoreError(
            f"cannot {action} s3://{self.bucket}/{self.prefix}{key}: {detail}; check the bucket and credentials"
        )

    def put(self, key: str, data: bytes) -> None:
        full = self.prefix + check_key(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except Exception as e:  # botocore's ClientError, connection and credential errors
            raise self._error("write", key, e) from e

    def put_new(self, key: str, data: bytes) -> bool:
        full = self.prefix + check_key(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")
            return True
        except Exception as e:
            # 412: the key exists; 409: a concurrent conditional write to it is in progress (it wins)
            if _error_code(e) in ("PreconditionFailed", "ConditionalRequestConflict") or _status(e) in (
                409,
                412,
            ):
                return False
            raise self._error("write", key, e) from e

    def get(self, key: str) -> bytes:
        full = self.prefix + check_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            return response["Body"].read()
        except Exception as e:
            if _error_code(e) in ("NoSuchKey", "404") or _status(e) == 404:
                raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from None
            raise self._error("read", key, e) from e

    def list(self, prefix: str) -> list[str]:
        keys = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                keys.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", ()))
        except Exception as e:
            raise self._error("list", prefix + "*", e) from e
        return sorted(keys)

    def delete(self, keys: Iterable[str]) -> None:
        keys = [self.prefix + check_key(k) for k in keys]
        for start in range(0, len(keys), _S3_DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + _S3_DELETE_BATCH]]
            try:
                response = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as e:
                raise self._error("delete", batch[0]["Key"][len(self.prefix) :], e) from e
            failed = [err for err in response.get("Errors", ()) if err.get("Code") != "NoSuchKey"]
            if failed:
                key = failed[0]["Key"][len(self.prefix) :]
                raise ObjectStoreError(
                    f"cannot delete s3://{self.bucket}/{self.prefix}{key}: {failed[0].get('Code')}; "
                    "check the bucket and credentials"
                )


def _error_code(e: Exception) -> str | None:
    response = getattr(e, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def _status(e: Exception) -> int | None:
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return None
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
