"""Downloads that survive dropped connections and never leave a bad file under the final name.

Weights and datasets are tens of megabytes fetched over connections that drop. Bytes go to a
hidden ``.NAME.part`` file beside the target; a dropped connection is retried with an HTTP
``Range`` request that resumes from the bytes already on disk, and a failed run keeps the
partial file so the next run resumes too. Only a complete file whose digest matches is renamed
onto the final name, atomically, so a file found under its final name can be trusted.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from mobilenets.core.errors import MobileNetsError

log = logging.getLogger("mobilenets")

CACHE_ENV = "MOBILENETS_CACHE"
# Seconds before the first retry, doubled before each next one: 0.5, 1, 2 for retries=3.
BACKOFF = 0.5
CHUNK = 1 << 16
# torchvision names its files after the first 8 hex digits of their SHA-256: the shortest
# prefix accepted.
MIN_SHA256_PREFIX = 8
DIGEST_NAMES = {"sha256": "SHA-256", "md5": "MD5"}


class ShortBody(ConnectionError):
    """The server closed the connection before sending the Content-Length it announced."""


# Failures a later attempt can get past. HTTPError is a URLError too: download() catches it
# first and fails at once on a 4xx answer.
TRANSIENT = (
    urllib.error.URLError,
    ConnectionError,  # includes ShortBody and http.client.RemoteDisconnected
    http.client.HTTPException,  # IncompleteRead, BadStatusLine
    TimeoutError,  # socket.timeout
    ssl.SSLError,  # a TLS connection cut mid-body
)


def cache_dir() -> Path:
    """Where downloads are kept: ``$MOBILENETS_CACHE``, else ``$XDG_CACHE_HOME/mobilenets``,
    else ``~/.cache/mobilenets`` (the XDG base-directory default)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mobilenets"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in chunks so a large file never sits in memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``path`` and return ``path``; a matching file already there is kept.

    ``sha256`` is a full digest or a prefix of at least 8 hex digits (torchvision's file names
    carry the first 8); ``md5`` is a full digest. A dropped connection, a timeout or a 5xx
    answer is retried up to ``retries`` times (``retries + 1`` attempts in all), each resuming
    from the bytes already received; a 4xx answer fails at once. A digest mismatch fails at
    once and deletes the partial file: a server that serves a corrupt file will serve it again.
    ``timeout`` bounds each connect and each read, in seconds.
    """
    expected = expected_digests(sha256=sha256, md5=md5)
    if not isinstance(retries, int) or retries < 0:
        raise MobileNetsError(f"retries must be an integer >= 0; got {retries!r}")
    path = Path(path)
    if path.is_file():
        mismatch = digest_mismatch(path, expected)
        if mismatch is None:
            return path
        log.warning(f"{path} does not match: {mismatch}; downloading it again")
    try:
        request = urllib.request.Request(url)
    except ValueError as error:  # not a URL urllib can open
        raise MobileNetsError(f"cannot download {url!r}: {error}") from error
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    attempts = retries + 1
    for attempt in range(attempts):
        if attempt:
            time.sleep(BACKOFF * 2 ** (attempt - 1))
        try:
            fetch_into(request, partial, timeout, progress, path.name)
            break
        except urllib.error.HTTPError as error:
            if 400 <= error.code < 500:
                raise MobileNetsError(f"download of {url} failed: {error}") from error
            failure = error
        except TRANSIENT as error:
            failure = error
    else:
        if partial.is_file() and partial.stat().st_size == 0:
            partial.unlink()
        kept = ""
        if partial.is_file():
            kept = f"; the partial file {partial} is kept; run again to resume"
        raise MobileNetsError(
            f"download of {url} failed after {attempts} attempts: {failure}{kept}"
        ) from failure
    mismatch = digest_mismatch(partial, expected)
    if mismatch is not None:
        partial.unlink()
        raise MobileNetsError(f"download of {url} is corrupt: {mismatch}")
    os.replace(partial, path)
    return path


def fetch_into(
    request: urllib.request.Request, partial: Path, timeout: float, progress: bool, name: str
) -> None:
    """One attempt: append to ``partial`` from its current size (or start it over when the
    server ignores the Range header) until the body ends; raise if it ends early."""
    offset = partial.stat().st_size if partial.is_file() else 0
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    else:
        request.remove_header("Range")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:
            raise
        # Range Not Satisfiable: nothing lies past our offset, so the partial file is whole (an
        # earlier run stopped before the rename) unless the server's size says otherwise.
        total = re.fullmatch(r"bytes \*/(\d+)", error.headers.get("Content-Range", ""))
        if total is None or int(total[1]) == offset:
            return  # the digest check decides
        partial.unlink()  # larger than the file: left over from another file or version
        return fetch_into(request, partial, timeout, progress, name)
    if response.status != 206:  # 200: the server ignored the Range, the body is whole
        offset = 0
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length is not None else None
    bar = tqdm(
        total=total,
        initial=offset,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
        file=sys.stderr,
    )
    with response, bar, open(partial, "ab" if offset else "wb") as out:
        while chunk := response.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))
    # urllib returns a body cut short without complaint: compare with what was announced.
    received = partial.stat().st_size
    if total is not None and received < total:
        raise ShortBody(f"connection closed after {received} of {total} bytes")


def expected_digests(sha256: str | None = None, md5: str | None = None) -> dict[str, str]:
    """Algorithm -> expected hex digest (lower case), each checked for form."""
    expected = {}
    if sha256 is not None:
        if not is_hex(sha256) or not MIN_SHA256_PREFIX <= len(sha256) <= 64:
            raise MobileNetsError(
                f"sha256 must be a hex digest of 64 digits or a prefix of at least "
                f"{MIN_SHA256_PREFIX}; got {sha256!r}"
            )
        expected["sha256"] = sha256.lower()
    if md5 is not None:
        if not is_hex(md5) or len(md5) != 32:
            raise MobileNetsError(f"md5 must be a hex digest of 32 digits; got {md5!r}")
        expected["md5"] = md5.lower()
    return expected


def is_hex(value) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]+", value) is not None


def digest_mismatch(path: Path, expected: dict[str, str]) -> str | None:
    """``None`` when every expected digest matches the file, else what differs."""
    for algorithm, want in expected.items():
        actual = file_digest(path, algorithm)
        if not actual.startswith(want):
            return f"{DIGEST_NAMES[algorithm]} {actual}, expected {want}"
    return None
