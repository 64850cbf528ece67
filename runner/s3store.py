"""S3-compatible object storage (AWS S3, MinIO, Ceph, R2, SeaweedFS) behind the Store protocol.

Where it connects comes only from the standard AWS configuration: AWS_ENDPOINT_URL /
AWS_ENDPOINT_URL_S3, AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
(/ AWS_SESSION_TOKEN) or AWS_PROFILE; never from a manifest, and no credential is ever put in
a message, a log line or an artifact. qabench's own knobs:

  QABENCH_S3_MAX_ATTEMPTS     attempts per request, with botocore's exponential backoff (default 12)
  QABENCH_S3_CONNECT_TIMEOUT  seconds to open a connection (default 5)
  QABENCH_S3_READ_TIMEOUT     seconds to wait on a response (default 60)
  QABENCH_S3_ADDRESSING_STYLE path | virtual | auto (default: path with a custom endpoint)
  QABENCH_S3_CREATE_BUCKET    1 creates a missing bucket instead of failing
  QABENCH_WORKDIR             local working folder root (default ~/.cache/qabench/work)

Integrity: every object carries the SHA-256 of its bytes in its metadata (x-amz-meta-sha256)
and every download is checked against it. Durability: every write lands in the local working
folder first and a journal entry names it until the upload succeeds, so a failed or killed upload
loses nothing and `publish_pending` finishes it later.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError, PartialCredentialsError, ProfileNotFound
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError, S3UploadFailedError

from runner.atomic import replacing
from runner.errors import StorageError, UserError
from runner.paths import check_key, is_quarantined
from runner.storage import DIR_MARKER, CorruptObject, LocalStore, file_sha256, folder_problems
from runner.storage_uri import parse_storage, redact

CHECKSUM = "sha256"
"""Metadata field holding the hex SHA-256 of an object's bytes (sent as x-amz-meta-sha256)."""

PENDING = ".qabench_pending"
"""Folder in the working root holding one journal entry per upload not yet confirmed."""

DEFAULT_MAX_ATTEMPTS = 12
# botocore's standard mode sleeps rand(0, 1) * min(0.05 s * 2**i, 20 s) before retry i+1 of an
# error that is not throttling (1 s base for throttling): 12 attempts wait at most
# 0.05 * (2**9 - 1) + 20 + 20 = 65.55 s, about 33 s on average, for a server that stays down.

_DENIED = {"AccessDenied", "403", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken", "AllAccessDisabled", "InvalidClientTokenId"}
_NO_BUCKET = {"NoSuchBucket"}
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_BOTO_ERRORS = (BotoCoreError, ClientError, Boto3Error, RetriesExceededError, S3UploadFailedError, S3DownloadFailedError)


def _env_number(name: str, default: float, kind: type = float) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r}: expected a number") from None
    if value <= 0:
        raise UserError(f"{name}={raw!r}: must be positive")
    return value


def max_attempts() -> int:
    """The retry budget per request: QABENCH_S3_MAX_ATTEMPTS, default 12."""
    return _env_number("QABENCH_S3_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, int)


def make_client() -> Any:
    """A boto3 S3 client configured from the standard AWS variables or profile, with qabench's retries."""
    try:
        session = boto3.session.Session(profile_name=os.environ.get("AWS_PROFILE") or None)
    except ProfileNotFound as exc:
        raise UserError(f"AWS_PROFILE: {exc}") from None
    region = os.environ.get("AWS_REGION") or session.region_name or "us-east-1"
    style = os.environ.get("QABENCH_S3_ADDRESSING_STYLE")
    if style is None and (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        style = "path"  # S3-compatible servers on an IP or plain host name rarely resolve <bucket>.<host>
    if style not in (None, "path", "virtual", "auto"):
        raise UserError(f"QABENCH_S3_ADDRESSING_STYLE={style!r}: expected path, virtual or auto")
    config = Config(
        region_name=region,
        retries={"mode": "standard", "max_attempts": max_attempts()},
        connect_timeout=_env_number("QABENCH_S3_CONNECT_TIMEOUT", 5.0),
        read_timeout=_env_number("QABENCH_S3_READ_TIMEOUT", 60.0),
        s3={"addressing_style": style} if style else None,
        # Our own SHA-256 covers integrity end to end; the newer CRC trailers are optional, and
        # several S3-compatible servers reject them, so send them only where S3 requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client("s3", config=config)


def open_s3_store(uri: str) -> S3Store:
    """The S3 store for `s3://bucket/prefix`, its bucket checked (and created with QABENCH_S3_CREATE_BUCKET=1)."""
    location = parse_storage(uri)  # the one parser: bucket rules, no credentials in the URI
    bucket, prefix = location.bucket, location.prefix
    root = Path(os.environ.get("QABENCH_WORKDIR") or Path.home() / ".cache" / "qabench" / "work")
    store = S3Store(bucket, prefix, root / bucket / prefix, make_client())
    store.check_bucket(create=os.environ.get("QABENCH_S3_CREATE_BUCKET", "") not in ("", "0"))
    return store


class S3Store:
    """Objects under `s3://bucket/prefix`, with a local working folder mirroring the keys written."""

    def __init__(self, bucket: str, prefix: str, workdir: Path, client: Any):
        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.cache = LocalStore(workdir)
        """The local working folder: every write lands here first; trainer checkpoints live here."""
        self._client = client
        # 8 MiB parts (S3's minimum is 5 MiB); four threads keep a 2-core host's uplink busy.
        self._transfer = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)

    # ---- naming and errors -------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint for messages: AWS_ENDPOINT_URL may carry user:password@, shown as ***@."""
        return redact(self._client.meta.endpoint_url)

    def _object(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _folder(self, key: str) -> str:
        """Object-name prefix of everything under `key` ("" = the store's whole prefix)."""
        check_key(key, allow_empty=True)
        parts = [p for p in (self.prefix, key) if p]
        return "/".join(parts) + "/" if parts else ""

    def where(self, key: str = "") -> str:
        """The s3:// URI of a key, for messages."""
        return f"{self.uri}/{key}" if key else self.uri

    def _describe(self, exc: BaseException, action: str, key: str) -> Exception:
        cause = exc
        # boto3's transfer manager wraps the botocore error it hit; the cause says what happened.
        while not isinstance(cause, (ClientError, BotoCoreError)) and (cause.__cause__ or cause.__context__):
            cause = cause.__cause__ or cause.__context__
        where = self.where(key)
        if isinstance(cause, ClientError):
            error = cause.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _DENIED or status == 403:
                return UserError(
                    f"access denied to bucket {self.bucket} at {self.endpoint} ({code or status}) while {action} {where}: "
                    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's policy"
                )
            if code in _NO_BUCKET:
                return self._missing_bucket()
            if code in _NOT_FOUND:
                return StorageError(f"no object {where} (at {self.endpoint})")
            return StorageError(f"S3 error while {action} {where} at {self.endpoint}: {code or status} {error.get('Message', '')}".rstrip())
        if isinstance(cause, (NoCredentialsError, PartialCredentialsError)):
            return UserError(f"no usable S3 credentials for bucket {self.bucket}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        if isinstance(cause, (HTTPClientError, BotoConnectionError)) or isinstance(exc, RetriesExceededError):
            return StorageError(
                f"cannot reach the S3 endpoint {self.endpoint} while {action} {where}: gave up after "
                f"{max_attempts()} attempts ({type(cause).__name__}); QABENCH_S3_MAX_ATTEMPTS sets the budget"
            )
        return StorageError(f"S3 failure while {action} {where} at {self.endpoint}: {type(cause).__name__}: {cause}")

    def _missing_bucket(self) -> UserError:
        return UserError(
            f"bucket {self.bucket} does not exist at {self.endpoint}: create it, or set QABENCH_S3_CREATE_BUCKET=1 to let qabench create it"
        )

    @contextmanager
    def _errors(self, action: str, key: str = "") -> Iterator[None]:
        try:
            yield
        except _BOTO_ERRORS as exc:
            raise self._translate(exc, action, key) from None

    def _translate(self, exc: BaseException, action: str, key: str) -> Exception:
        """The qabench error for a boto failure, with any credentials in the text redacted.

        botocore quotes the endpoint URL, user:password@ included, in its own messages
        (`Could not connect to the endpoint URL: "http://user:pass@host/..."`).
        """
        error = self._describe(exc, action, key)
        error.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in error.args)
        if isinstance(error, UserError):
            error.problems = [replace(p, message=redact(p.message)) for p in error.problems]
        return error

    @staticmethod
    def _is_missing(exc: ClientError) -> bool:
        return str(exc.response.get("Error", {}).get("Code", "")) in _NOT_FOUND

    # ---- bucket ------------------------------------------------------------------------------

    def check_bucket(self, create: bool = False) -> None:
        """Fail early and clearly: endpoint unreachable (StorageError), access denied or no bucket (UserError)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            # HEAD has no body: the status alone says 404 (no bucket) or 403 (denied).
            if str(exc.response.get("Error", {}).get("Code", "")) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._translate(exc, "checking bucket", "") from None
        except _BOTO_ERRORS as exc:
            raise self._translate(exc, "checking bucket", "") from None
        if not create:
            raise self._missing_bucket()
        region = self._client.meta.region_name
        arguments: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":  # us-east-1 is the one region that rejects a constraint
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with self._errors("creating bucket"):
            self._client.create_bucket(**arguments)

    # ---- the Store protocol ------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        name = self._object(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if self._is_missing(exc):
                return False
            raise self._translate(exc, "checking", key) from None
        except _BOTO_ERRORS as exc:
            raise self._translate(exc, "checking", key) from None
        return True

    def read_bytes(self, key: str) -> bytes:
        name = self._object(key)
        with self._errors("reading", key):
            response = self._client.get_object(Bucket=self.bucket, Key=name)
            data = response["Body"].read()
        self._verify(key, response.get("Metadata", {}), hashlib.sha256(data).hexdigest())
        return data

    def _verify(self, key: str, metadata: dict[str, str], actual: str) -> None:
        expected = metadata.get(CHECKSUM)
        if expected is None:
            raise CorruptObject(f"{self.where(key)} has no {CHECKSUM} metadata, so its integrity cannot be checked (not written by qabench?)")
        if expected != actual:
            raise CorruptObject(
                f"{self.where(key)} is corrupt: its bytes hash to sha256 {actual[:16]}…, but {expected[:16]}… was "
                f"recorded when it was uploaded; `python -m runner verify {self.uri} --repair` moves it aside and the next run redoes it"
            )

    def write_bytes(self, key: str, data: bytes) -> None:
        self._object(key)
        # Journal first: a kill after it finds either no local copy (nothing to publish, the
        # caller never saw success) or a whole one (cache writes are atomic) to publish later.
        with self._journal(key, "file"):
            self.cache.write_bytes(key, data)
            self._upload(key, self._cached(key))

    def write_new(self, key: str, data: bytes) -> bool:
        self._object(key)
        with self._journal(key, "new"):
            self.cache.write_bytes(key, data)
            return self._create(key, self._cached(key))

    def _create(self, key: str, path: Path) -> bool:
        """PUT with If-None-Match: * (S3 conditional writes): the server keeps the first version."""
        body = path.read_bytes()
        metadata = {CHECKSUM: hashlib.sha256(body).hexdigest()}
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._object(key), Body=body, Metadata=metadata, IfNoneMatch="*")
            return True
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False  # another writer's version is there (or landing): it stands
            if code not in ("NotImplemented", "501"):
                raise self._translate(exc, "uploading", key) from None
        except _BOTO_ERRORS as exc:
            raise self._translate(exc, "uploading", key) from None
        # A server without conditional writes: check, then write; a race can still replace.
        if self.exists(key):
            return False
        self._upload(key, path)
        return True

    def _cached(self, key: str) -> Path:
        return self.cache.root / key

    def _upload(self, key: str, path: Path) -> None:
        metadata = {CHECKSUM: file_sha256(path)}
        with self._errors("uploading", key):
            self._client.upload_file(str(path), self.bucket, self._object(key), ExtraArgs={"Metadata": metadata}, Config=self._transfer)

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self._list_all(prefix) if not k.rsplit("/", 1)[-1].startswith(".") and not is_quarantined(k))

    def _list_all(self, prefix: str) -> list[str]:
        """Keys under `prefix`, internal markers included, relative to the store's prefix."""
        start = self._folder(prefix)
        strip = len(self._folder(""))
        keys = []
        with self._errors("listing", prefix):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", []):
                    key = item["Key"][strip:]
                    try:
                        keys.append(check_key(key))
                    except UserError:
                        continue  # not addressable through this store (e.g. "a//b" from another tool)
        return keys

    def put_dir(self, key: str, folder: Path) -> None:
        self._object(key)
        for path in Path(folder).rglob("*"):
            if path.is_file():
                check_key(f"{key}/{path.relative_to(folder).as_posix()}")
        with self._journal(key, "dir"):
            checksums = self.cache.put_dir(key, Path(folder))  # only hashes when `folder` is already local_dir(key)
            self._upload_dir(key, checksums)

    def _upload_dir(self, key: str, hashed: dict[str, str] | None = None) -> None:
        local = self._cached(key)
        files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file() and not p.name.startswith("."))
        hashed = hashed if hashed is not None and set(hashed) == set(files) else {}
        marker = f"{key}/{DIR_MARKER}"
        before = set(self._list_all(key))
        # Marker off first, on last: a folder being replaced never passes for a complete one.
        if marker in before:
            self._delete([marker])
        checksums = {}
        for name in files:
            checksums[name] = hashed.get(name) or file_sha256(local / name)
            self._upload(f"{key}/{name}", local / name)
        self._delete(sorted(before - {f"{key}/{n}" for n in files} - {marker}))
        body = json.dumps({"files": checksums}, indent=1, sort_keys=True).encode()
        with self._errors("uploading", marker):
            self._client.put_object(
                Bucket=self.bucket, Key=self._object(marker), Body=body, Metadata={CHECKSUM: hashlib.sha256(body).hexdigest()}
            )

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._object(k)} for k in keys[start : start + 1000]]
            with self._errors("deleting", keys[start]):
                response = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            failed = response.get("Errors") or []
            if failed:
                raise StorageError(f"cannot delete {self.where(failed[0].get('Key', ''))}: {failed[0].get('Code')} {failed[0].get('Message', '')}")

    def dir_complete(self, key: str) -> bool:
        return self.exists(f"{key}/{DIR_MARKER}")

    def remove_dir(self, key: str) -> None:
        found = self._list_all(key)
        marker = f"{key}/{DIR_MARKER}"
        if marker in found:
            self._delete([marker])
        self._delete([k for k in found if k != marker])
        shutil.rmtree(self._cached(key), ignore_errors=True)

    def local_dir(self, key: str) -> Path:
        return self.cache.local_dir(key)

    def sync_down(self, key: str) -> Path:
        target = self.cache.local_dir(key)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            self.copy_to(key, staging)
            listed = self._published_files(key)
            if listed is not None:
                # Every object matched its own checksum; the folder must also be the one published.
                found = {p.relative_to(staging).as_posix(): file_sha256(p) for p in staging.rglob("*") if p.is_file()}
                problems = folder_problems(listed, found)
                if problems:
                    raise CorruptObject(f"{self.where(key)} is not the folder as published: {'; '.join(problems)}")
            self.cache.put_dir(key, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _published_files(self, key: str) -> dict[str, str] | None:
        """name → sha256 from the folder's DIR_MARKER, None when it has none (not published by put_dir)."""
        marker = f"{key}/{DIR_MARKER}"
        if not self.exists(marker):
            return None
        try:
            return dict(json.loads(self.read_bytes(marker))["files"])
        except (ValueError, KeyError, TypeError):
            raise CorruptObject(f"{self.where(marker)} is not a folder listing") from None

    def verify_dir(self, key: str, deep: bool = False) -> list[str]:
        try:
            listed = self._published_files(key)
        except CorruptObject as exc:
            return [f"{DIR_MARKER}: {exc}"]
        if listed is None:
            return []
        found: dict[str, str | None] = {}
        problems = []
        for name in self._list_all(key):
            relative = name[len(key) + 1 :]
            if relative == DIR_MARKER:
                continue
            if not deep:
                found[relative] = self._head_sha256(name)
                continue
            try:
                found[relative] = hashlib.sha256(self.read_bytes(name)).hexdigest()
            except CorruptObject as exc:
                problems.append(f"{relative}: {exc}")
                found[relative] = None
        return problems + folder_problems(listed, found)

    def _head_sha256(self, key: str) -> str | None:
        """The sha256 an object's metadata records (None: none recorded)."""
        with self._errors("checking", key):
            return self._client.head_object(Bucket=self.bucket, Key=self._object(key)).get("Metadata", {}).get(CHECKSUM)

    def quarantine(self, key: str, dest: str) -> bool:
        source, target = self._object(key), self._object(dest)
        if not self.exists(key):
            return False
        # S3 has no rename: copy (metadata kept, multipart for large objects), then delete.
        with self._errors("quarantining", key):
            self._client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, target, Config=self._transfer)
        self._delete([key])
        cached = self._cached(key)
        if cached.is_file() or cached.is_symlink():
            cached.unlink()  # the local working copy must not outlive the object it mirrors
        return True

    def quarantine_dir(self, key: str, dest: str) -> bool:
        found = self._list_all(key)
        if not found:
            return False
        marker = f"{key}/{DIR_MARKER}"
        for name in found:
            with self._errors("quarantining", name):
                self._client.copy(
                    {"Bucket": self.bucket, "Key": self._object(name)}, self.bucket, self._object(f"{dest}/{name[len(key) + 1 :]}"), Config=self._transfer
                )
        # Marker off first: from then on the folder no longer passes for a complete one.
        if marker in found:
            self._delete([marker])
        self._delete([k for k in found if k != marker])
        shutil.rmtree(self._cached(key), ignore_errors=True)
        return True

    def copy_to(self, prefix: str, dest: Path) -> list[str]:
        keys = self.list(prefix)
        for key in keys:
            relative = key[len(prefix) + 1 :] if prefix else key
            self._download(key, Path(dest) / relative)
        return keys

    def _download(self, key: str, target: Path) -> None:
        """Fetch one object to `target` through the transfer manager (ranged GETs for large ones), verified."""
        name = self._object(key)
        with replacing(target) as tmp:
            for attempt in range(3):
                with self._errors("downloading", key):
                    head = self._client.head_object(Bucket=self.bucket, Key=name)
                    self._client.download_file(self.bucket, name, str(tmp), Config=self._transfer)
                    # The checksum belongs to the version we HEADed; another writer may have
                    # replaced the object since. An unchanged ETag means the bytes are that version.
                    replaced = self._client.head_object(Bucket=self.bucket, Key=name)["ETag"] != head["ETag"]
                if not replaced or attempt == 2:
                    break
            self._verify(key, head.get("Metadata", {}), file_sha256(tmp))

    # ---- uploads that did not finish -----------------------------------------------------------

    def _entry(self, key: str, kind: str) -> Path:
        return self.cache.root / PENDING / (hashlib.sha256(f"{kind}:{key}".encode()).hexdigest()[:32] + ".json")

    @contextmanager
    def _journal(self, key: str, kind: str) -> Iterator[None]:
        """Name the upload in the journal while it runs; a failure or a kill leaves the entry behind."""
        entry = self._entry(key, kind)
        record = json.dumps({"key": key, "kind": kind, "since": time.time_ns()}).encode()
        self.cache.write_bytes(f"{PENDING}/{entry.name}", record)
        yield
        entry.unlink(missing_ok=True)

    def publish_pending(self, prefix: str) -> list[str]:
        folder = self.cache.root / PENDING
        entries = []
        for path in folder.glob("*.json") if folder.is_dir() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            key = record.get("key", "")
            try:
                check_key(key)
            except UserError:
                continue  # not an entry this store wrote
            if key == prefix or key.startswith(f"{prefix}/") or not prefix:
                entries.append((record.get("since", 0), key, record.get("kind"), path))
        published = []
        # In the order they were first written, so a run's _SUCCESS still goes after its shards.
        for _, key, kind, path in sorted(entries):
            if not self._cached(key).exists():
                path.unlink(missing_ok=True)  # the local copy is gone; nothing left to publish
                continue
            if kind == "dir":
                self._upload_dir(key)
            elif kind == "new":
                self._create(key, self._cached(key))
            else:
                self._upload(key, self._cached(key))
            path.unlink(missing_ok=True)
            published.append(key)
        return published
