"""Downloading a file from a list of mirrors, checksum-verified, written atomically.

Only the standard library (``urllib``) is used. A file is streamed to a temporary file in the
destination directory, its checksum verified, then moved into place with ``os.replace``: the
final path holds either the old file (untouched) or the complete, verified new one, never a
partial download.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from funcbp.data.base import DownloadError

__all__ = ["download_file", "file_digest"]

_CHUNK = 1 << 20
_USER_AGENT = "funcbp-data/0.1 (+https://github.com/; urllib)"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``"sha256"``, ``"md5"``, any name ``hashlib`` knows).

    Examples:
      >>> import tempfile, os
      >>> from funcbp.data import file_digest
      >>> path = os.path.join(tempfile.mkdtemp(), "empty")
      >>> open(path, "wb").close()
      >>> file_digest(path, "md5")
      'd41d8cd98f00b204e9800998ecf8427e'
    """
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_to(url: str, stream, digests: dict, timeout: float) -> int:
    """Stream ``url`` into ``stream``, feeding ``digests``; the number of bytes read."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        declared = response.headers.get("Content-Length")
        size = 0
        for block in iter(lambda: response.read(_CHUNK), b""):
            stream.write(block)
            for digest in digests.values():
                digest.update(block)
            size += len(block)
    if declared is not None and int(declared) != size:
        raise DownloadError(f"truncated download: expected {declared} bytes, received {size}")
    return size


def download_file(
    urls: str | Sequence[str],
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``path`` from the first mirror that serves it with the expected checksum.

    Each URL is tried in order; a network error, an HTTP error (404, ...), a truncated body or
    a checksum mismatch moves on to the next. The bytes go to a temporary file
    ``.<name>.*.part`` in the destination directory, which is verified and then moved onto
    ``path`` with ``os.replace`` (atomic), or deleted on any failure: a file already at
    ``path`` is replaced only by a complete, verified download.

    Args:
      urls: one URL or several mirrors of the same file.
      path: where the file goes; its directory is created if missing.
      sha256: expected SHA-256 hex digest of the downloaded bytes, or ``None``.
      md5: expected MD5 hex digest (what MNIST and Fashion-MNIST publish), or ``None``.
        With neither, the bytes are not verified: pass a checksum whenever you know one.
      timeout: seconds to wait for each connection and read.

    Returns:
      ``path`` as a ``Path``.

    Raises:
      DownloadError: every mirror failed; the message lists each URL with its error
        (``HTTP Error 404: Not Found``, ``checksum mismatch: expected sha256 ..., got ...``).

    Examples:
      >>> from funcbp.data import download_file
      >>> download_file(["https://example.org/a.gz", "https://mirror.example/a.gz"],
      ...               "data/a.gz", sha256="...")  # doctest: +SKIP
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError(f"download_file: no URLs given for {path}")
    expected = {name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        handle, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".part", dir=path.parent
        )
        try:
            digests = {name: hashlib.new(name) for name in expected}
            with os.fdopen(handle, "wb") as stream:
                _fetch_to(url, stream, digests, timeout)
                stream.flush()
                os.fsync(stream.fileno())
            for name, digest in digests.items():
                if digest.hexdigest() != expected[name]:
                    raise DownloadError(
                        f"checksum mismatch: expected {name} {expected[name]}, "
                        f"got {digest.hexdigest()}"
                    )
            os.replace(tmp_name, path)
            return path
        except (OSError, http.client.HTTPException, DownloadError, ValueError) as exc:
            # URLError and HTTPError are OSErrors; IncompleteRead is an HTTPException
            failures.append(f"  {url}: {exc}")
        finally:
            if os.path.exists(tmp_name):
                os.remove(tmp_name)
    raise DownloadError(
        f"could not download {path.name} to {path} (nothing was written there):\n"
        + "\n".join(failures)
        + "\nCheck the network, or put the file there yourself."
    )
