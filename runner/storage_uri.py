"""Storage locations: the one parser of folder paths, `file://` URIs and `s3://` URIs, and `redact`.

Where a storage location points (`choose_storage` applies the precedence):

  given as                    relative paths resolve against
  --storage on the command    the working folder
  output.storage in manifest  the manifest's folder (like every other path in a manifest)
  QABENCH_STORAGE             the working folder
  (nothing)                   runs/ in the working folder

  text                        meaning
  runs, ../elsewhere          a folder, relative as above
  /abs/path                   that folder
  file:///abs/path            /abs/path (three slashes: an empty host, then the absolute path)
  file://localhost/abs/path   /abs/path
  file://HOST/...             rejected: file://runs32 and file://tmp/x name a host, not a folder
  file:relative               rejected: a file: URI holds an absolute path
  s3://bucket[/prefix]        S3 (bucket name rules checked; no port, query or credentials)
  any other scheme://         rejected

Credentials never belong in a storage URI: it is printed in logs and written into Kubernetes
Jobs. They come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE (runner/s3store.py).
Imports nothing heavy: manifest validation uses it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from runner.errors import UserError
from runner.paths import check_key

DEFAULT_STORAGE = "runs"
"""The storage folder when nothing names one, below the working folder."""

SCHEMES = ("file", "s3")
"""URI schemes a storage location may use."""

# Text is a URI when it has `scheme://`, or a known scheme with a single colon (`file:/x`,
# `s3:bucket`); `runs:2024` or `C:\runs` stay folder names.
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# userinfo of any scheme://user:password@host; greedy up to the authority's last '@' (an
# unescaped '@' in a password), never past '/', whitespace or a quote.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#@'\"]*(?:@[^/\s?#@'\"]*)*@")

USAGE = "use a folder path, file:///ABSOLUTE/PATH (three slashes) or s3://BUCKET/PREFIX"


def redact(text: str) -> str:
    """`text` with the user name and password of every `scheme://user:password@host` replaced by `***`."""
    return _USERINFO.sub(r"\1***@", text)


@dataclass(frozen=True)
class StorageLocation:
    """A parsed storage location: a local folder (`path`) or an S3 bucket and key prefix."""

    scheme: str
    """`file` or `s3`."""
    path: Path | None = None
    """The absolute local folder (file only)."""
    bucket: str = ""
    prefix: str = ""
    """Key prefix inside the bucket, without leading or trailing '/' (s3 only)."""

    @property
    def uri(self) -> str:
        """The canonical URI: file:///abs/path or s3://bucket/prefix."""
        if self.path is not None:
            return self.path.as_uri()
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


class _Invalid(ValueError):
    """Why a text is not a storage location; the text itself is added by the caller, redacted."""


def _local(text: str, relative_to: str) -> StorageLocation:
    parsed = urlsplit(text)
    if "@" in parsed.netloc:
        raise _Invalid("credentials do not belong in a storage URI, and a file: URI names a local folder: file:///ABSOLUTE/PATH (three slashes)")
    if parsed.netloc not in ("", "localhost"):
        host = parsed.netloc
        rest = unquote(parsed.path).lstrip("/")
        relative = f"{host}/{rest}" if rest else host
        raise _Invalid(
            f"{host!r} is read as a host name (file://HOST/PATH), and only local folders are supported; "
            f"write file:///{relative} (three slashes) for the absolute folder /{relative}, or {relative} for a folder relative to {relative_to}"
        )
    path = unquote(parsed.path)
    if parsed.query or parsed.fragment:
        raise _Invalid("'?' and '#' are not allowed in file: URIs; write the folder path plainly")
    if not path.startswith("/"):
        raise _Invalid(f"a file: URI holds an absolute path (file:///ABSOLUTE/PATH); write {path or 'FOLDER'} for a folder relative to {relative_to}")
    return StorageLocation("file", Path(path).resolve())


def _s3(text: str) -> StorageLocation:
    parsed = urlsplit(text)
    if "@" in parsed.netloc:
        raise _Invalid(
            "credentials do not belong in a storage URI (it is printed in logs and written into Kubernetes Jobs); "
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and write s3://BUCKET/PREFIX"
        )
    if not text.lower().startswith("s3://"):
        raise _Invalid("an S3 location is written s3://BUCKET/PREFIX")
    if parsed.query or parsed.fragment or ";" in parsed.path:
        raise _Invalid("'?', '#' and ';' are not allowed in s3:// URIs")
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if ":" in bucket:
        raise _Invalid("a bucket name has no port; the endpoint comes from AWS_ENDPOINT_URL")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket or _is_ip_address(bucket):
        raise _Invalid(
            f"{bucket!r} is not a bucket name (3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit, not an IP address)"
        )
    try:
        check_key(prefix, allow_empty=True)
    except UserError as exc:
        raise _Invalid(f"bad key prefix: {exc.problems[0].message}") from None
    return StorageLocation("s3", bucket=bucket, prefix=prefix)


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def parse_storage(text: str, base: Path | None = None, origin: str = "storage") -> StorageLocation:
    """The location `text` names; a relative folder resolves against `base` (default: the working folder).

    UserError (exit 2) for a host in a file: URI, an unknown scheme, a bad bucket or credentials
    in the URI; `origin` names where the text came from in that message (`--storage`, `output.storage`).
    """
    base = Path.cwd() if base is None else Path(base)
    try:
        return _parse(text, base, str(base))
    except _Invalid as exc:
        raise UserError(f"{origin} {redact(text)!r}: {exc}") from None


def _parse(text: str, base: Path | None, relative_to: str) -> StorageLocation:
    if not text or not text.strip():
        raise _Invalid(f"empty; {USAGE}")
    if "\0" in text:
        raise _Invalid("contains a NUL byte")
    match = _URI.match(text)
    scheme = match.group(1).lower() if match else ""
    if match and (match.group(2) or scheme in SCHEMES):
        if scheme == "file":
            return _local(text, relative_to)
        if scheme == "s3":
            return _s3(text)
        raise _Invalid(f"unsupported storage URI scheme {scheme!r}; {USAGE}")
    return StorageLocation("file", (base / text).resolve() if base is not None else Path(text))


def storage_problem(text: str, relative_to: str = "the manifest's folder") -> str | None:
    """Why `text` is not a storage location (syntax only, nothing resolved), or None."""
    try:
        _parse(text, None, relative_to)
    except _Invalid as exc:
        return str(exc)
    return None


def choose_storage(command_line: str | None, manifest_storage: str | None = None, manifest_dir: Path | None = None) -> StorageLocation:
    """Where a run stores its artifacts: `--storage`, else the manifest's `output.storage`, else QABENCH_STORAGE, else runs/.

    Relative folders resolve against the working folder, except `output.storage`, which
    resolves against `manifest_dir` like every path written in a manifest.
    """
    if command_line:
        return parse_storage(command_line, origin="--storage")
    if manifest_storage:
        return parse_storage(manifest_storage, manifest_dir, origin="output.storage")
    environment = os.environ.get("QABENCH_STORAGE")
    if environment:
        return parse_storage(environment, origin="QABENCH_STORAGE")
    return parse_storage(DEFAULT_STORAGE)
