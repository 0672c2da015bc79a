"""Task data reference -> bytes: data: URIs, http(s) URLs, Label Studio paths, cloud URIs.

Follows the SDK's ``get_local_path`` rules (label-studio-sdk 2.1.2), without its disk cache:

* ``/data/upload/P/f`` (or ``upload/P/f``): ``/storage-data/uploaded/?filepath=upload/P/f``
  on Label Studio, falling back to ``/data/upload/P/f``;
* ``/data/local-files/?d=path``: read from ``LOCAL_FILES_DOCUMENT_ROOT`` when that is set and
  the file exists there, else downloaded from Label Studio;
* ``s3://``, ``gs://``, ``azure-blob://``: ``/tasks/<task_id>/presign/?fileuri=<base64>``,
  which redirects to a signed URL;
* any other path starting with ``/``: relative to LABEL_STUDIO_URL.

The Label Studio Authorization header goes only to LABEL_STUDIO_URL's origin; requests drops
it on redirects to another host (the presigned URL).
"""
from __future__ import annotations

import base64
import binascii
import os
import posixpath
import threading
import time
from urllib.parse import parse_qs, unquote, unquote_to_bytes, urlsplit

import requests

from ml_backend.config import Settings
from ml_backend.labelstudio.auth_token import LabelStudioError, TokenAuth, legacy_hint, scrub, send

_CLOUD_PREFIXES = ("s3:", "gs:", "azure-blob:")
_CHUNK = 64 * 1024


class DataError(Exception):
    """Task data could not be fetched or decoded; the message says why (never the API key)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def _describe(ref: str) -> str:
    """A short, safe name for ``ref`` in messages (no query string: signed URLs carry secrets there)."""
    if ref.startswith("data:"):
        return ref[:40] + "..."
    parts = urlsplit(ref)
    if parts.scheme in ("http", "https"):
        ref = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return ref if len(ref) <= 200 else ref[:200] + "..."


def local_files_root(settings: Settings) -> str | None:
    """``settings.local_files_root`` (LOCAL_FILES_DOCUMENT_ROOT), absolute; None when unset or '/'."""
    root = settings.local_files_root
    if not root:
        return None
    root = os.path.abspath(root)
    # "/" would turn every readable file on this machine into a task file.
    return None if root == os.path.abspath(os.sep) else root


def decode_data_uri(uri: str) -> bytes:
    """The payload of a ``data:[<type>][;base64],<data>`` URI."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise DataError("malformed data: URI (no comma)")
    if header.lower().endswith(";base64"):
        text = unquote(payload).strip().replace("-", "+").replace("_", "/")
        text = "".join(text.split())
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise DataError("malformed data: URI (invalid base64)") from None
    return unquote_to_bytes(payload)


class Fetcher:
    """Downloads task data with the Label Studio credentials from ``settings``."""

    def __init__(self, settings: Settings):
        self.ls_url = settings.label_studio_url.rstrip("/")
        self._key = settings.label_studio_api_key
        self.timeout = settings.fetch_timeout
        self.max_pixels = int(settings.max_image_megapixels * 1_000_000)
        self.max_bytes = settings.max_body_bytes
        self.local_root = local_files_root(settings)
        self._auth = TokenAuth(self.ls_url, self._key, self.timeout) if self.ls_url and self._key else None
        self._local = threading.local()  # one requests.Session per thread

    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def fetch(self, ref: str, task_id: int | None = None) -> bytes:
        """The bytes behind a task data value (see the module docstring for the forms)."""
        try:
            return self._fetch(ref, task_id)
        except (ValueError, UnicodeError) as exc:  # a URL urllib or requests cannot parse ("http://[")
            raise DataError(f"malformed data reference ({type(exc).__name__})") from None

    def _fetch(self, ref: str, task_id: int | None) -> bytes:
        ref = (ref or "").strip()
        if not ref:
            raise DataError("empty data reference")
        if ref.startswith("data:"):
            return self._limit(decode_data_uri(ref), ref)
        scheme = urlsplit(ref).scheme.lower()
        if scheme in ("http", "https"):
            return self._get(ref, ref)
        if ref.startswith(_CLOUD_PREFIXES):
            return self._cloud(ref, task_id)
        if ref.startswith("upload/"):
            ref = "/data/" + ref
        elif ref.startswith("/upload/"):
            ref = "/data" + ref
        if ref.startswith("/data/upload/"):
            return self._upload(ref)
        if ref.startswith("/data/") and "?d=" in ref:
            data = self._from_disk(ref)
            return data if data is not None else self._ls_get(ref)
        if ref.startswith("/"):
            return self._ls_get(ref)
        raise DataError(f"unsupported data reference {_describe(ref)!r}: expected a URL, a data: URI, "
                        "a Label Studio path or an s3://, gs://, azure-blob:// URI")

    # -- Label Studio paths -------------------------------------------------

    def _require_ls(self, ref: str) -> None:
        if not self.ls_url:
            raise DataError(f"{_describe(ref)!r} is stored in Label Studio: set LABEL_STUDIO_URL and "
                            "LABEL_STUDIO_API_KEY so the backend can download it")
        if not self._key:
            # Without a key Label Studio answers with its login page, not the file.
            raise DataError(f"{_describe(ref)!r} is stored in Label Studio: set LABEL_STUDIO_API_KEY "
                            "so the backend can download it")

    def _ls_get(self, path: str) -> bytes:
        self._require_ls(path)
        return self._get(self.ls_url + path, path)

    def _upload(self, path: str) -> bytes:
        self._require_ls(path)
        filepath = path[len("/data/"):]
        try:
            return self._get(f"{self.ls_url}/storage-data/uploaded/?filepath={filepath}", path)
        except DataError as first:
            if first.status is None:
                raise
            try:
                return self._get(self.ls_url + path, path)
            except DataError as second:
                raise DataError(f"{second} (the storage proxy answered HTTP {first.status})",
                                second.status) from None

    def _cloud(self, uri: str, task_id: int | None) -> bytes:
        self._require_ls(uri)
        if task_id is None:
            raise DataError(f"{_describe(uri)!r} is a cloud storage URI: its task id is needed "
                            "to have Label Studio presign it")
        encoded = base64.urlsafe_b64encode(uri.encode()).decode()
        return self._get(f"{self.ls_url}/tasks/{int(task_id)}/presign/?fileuri={encoded}", uri)

    def _from_disk(self, ref: str) -> bytes | None:
        root = self.local_root
        if root is None:
            return None
        values = parse_qs(urlsplit(ref).query, keep_blank_values=True).get("d")
        rel = values[-1] if values else ""
        if not rel:
            raise DataError(f"Local Storage URL {_describe(ref)!r} has no file path")
        # Same normalisation as Label Studio's /data/local-files/ view: ?d= is relative to the root.
        path = os.path.abspath(os.path.join(root, posixpath.normpath(rel).lstrip("/")))
        if os.path.commonpath([path, root]) != root:
            raise DataError(f"Local Storage path {rel!r} points outside LOCAL_FILES_DOCUMENT_ROOT")
        if not os.path.isfile(path):  # also False for a NUL, a lone surrogate, a name too long
            return None
        try:
            if os.path.getsize(path) > self.max_bytes:
                raise DataError(f"{rel!r} is larger than MAX_BODY_BYTES ({self.max_bytes} bytes)")
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:  # unreadable, or gone since isfile: the task is unreadable, not a 500
            raise DataError(f"Local Storage file {_describe(rel)!r} cannot be read "
                            f"({exc.strerror or type(exc).__name__})") from None

    # -- HTTP ---------------------------------------------------------------

    def _limit(self, data: bytes, ref: str) -> bytes:
        if len(data) > self.max_bytes:
            raise DataError(f"{_describe(ref)!r} is larger than MAX_BODY_BYTES ({self.max_bytes} bytes)")
        return data

    def _get(self, url: str, ref: str) -> bytes:
        same_origin = bool(self.ls_url) and _origin(url) == _origin(self.ls_url)
        auth = self._auth if same_origin else None
        name = _describe(ref)
        deadline = time.monotonic() + self.timeout
        try:
            with send(self.session, "GET", url, auth, stream=True, timeout=self.timeout) as r:
                if r.status_code >= 400:
                    hint = legacy_hint(auth, r.status_code) if same_origin else ""
                    raise DataError(f"HTTP {r.status_code} fetching {name!r}{hint}", r.status_code)
                if same_origin and urlsplit(r.url).path.startswith("/user/login"):
                    raise DataError(f"Label Studio redirected {name!r} to its login page"
                                    f"{legacy_hint(auth, 401)}", 401)
                length = r.headers.get("Content-Length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    raise DataError(f"{name!r} is larger than MAX_BODY_BYTES ({self.max_bytes} bytes)")
                chunks, size = [], 0
                for chunk in r.iter_content(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise DataError(f"{name!r} is larger than MAX_BODY_BYTES ({self.max_bytes} bytes)")
                    # The read timeout is per chunk; this bounds the whole download.
                    if time.monotonic() > deadline:
                        raise DataError(f"fetching {name!r} took longer than FETCH_TIMEOUT ({self.timeout} s)")
                    chunks.append(chunk)
                return b"".join(chunks)
        except LabelStudioError as exc:
            raise DataError(scrub(str(exc), self._key), exc.status) from None
        except requests.Timeout:
            raise DataError(f"fetching {name!r} took longer than FETCH_TIMEOUT ({self.timeout} s)") from None
        except requests.RequestException as exc:
            raise DataError(scrub(f"cannot fetch {name!r}: {type(exc).__name__}", self._key)) from None
