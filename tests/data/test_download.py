"""download_file and load_mnist(download=True) against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading

import numpy as np
import pytest

from funcbp.data import DataNotFoundError, DownloadError, download_file, load_mnist
from funcbp.data import mnist as mnist_module


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    log: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.log.append(self.path)
        body = self.files.get(self.path)
        if self.path.startswith("/truncated/"):  # announce more bytes than are sent
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only a few bytes")
            return
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def server():
    """A loopback HTTP server; ``files`` maps URL paths to bodies, ``log`` records requests."""
    handler = type("Handler", (_Handler,), {"files": {}, "log": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _idx_bytes(array: np.ndarray) -> bytes:
    """uint8 IDX bytes, header built by hand from the format description."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def test_download_writes_verified_file(server, tmp_path):
    body = gzip.compress(_idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4)))
    server.files["/a/x.gz"] = body
    dest = tmp_path / "sub" / "x.gz"
    out = download_file(
        server.base + "/a/x.gz",
        dest,
        sha256=hashlib.sha256(body).hexdigest(),
        md5=hashlib.md5(body).hexdigest().upper(),  # case does not matter
    )
    assert out == dest
    assert dest.read_bytes() == body
    assert _leftovers(dest.parent) == []


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    server.files["/x.gz"] = b"the served bytes"
    dest = tmp_path / "x.gz"
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        download_file(server.base + "/x.gz", dest, sha256=wrong)
    assert wrong in str(info.value) and "x.gz" in str(info.value)
    assert hashlib.sha256(b"the served bytes").hexdigest() in str(info.value)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_keeps_existing_good_file(server, tmp_path):
    good = b"good old contents"
    dest = tmp_path / "x.gz"
    dest.write_bytes(good)
    server.files["/x.gz"] = b"tampered"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_file(server.base + "/x.gz", dest, md5=hashlib.md5(good).hexdigest())
    assert dest.read_bytes() == good
    assert _leftovers(tmp_path) == []


def test_http_404_is_a_clear_error(server, tmp_path):
    dest = tmp_path / "missing.gz"
    with pytest.raises(DownloadError) as info:
        download_file(server.base + "/missing.gz", dest, sha256="0" * 64)
    message = str(info.value)
    assert "404" in message and server.base + "/missing.gz" in message and "missing.gz" in message
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_truncated_body_is_refused(server, tmp_path):
    dest = tmp_path / "t.gz"
    with pytest.raises(DownloadError, match="truncated|IncompleteRead"):
        download_file(server.base + "/truncated/t.gz", dest)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_falls_back_to_next_mirror(server, tmp_path):
    body = b"payload"
    server.files["/good/f"] = body
    server.files["/bad/f"] = b"corrupted payload"
    mirrors = [server.base + "/gone/f", server.base + "/bad/f", server.base + "/good/f"]
    download_file(mirrors, tmp_path / "f", sha256=hashlib.sha256(body).hexdigest())
    assert (tmp_path / "f").read_bytes() == body
    assert server.log == ["/gone/f", "/bad/f", "/good/f"]


def test_every_mirror_failing_lists_each(server, tmp_path):
    server.files["/bad/f"] = b"corrupted"
    mirrors = [server.base + "/gone/f", server.base + "/bad/f"]
    with pytest.raises(DownloadError) as info:
        download_file(mirrors, tmp_path / "f", sha256="0" * 64)
    lines = str(info.value).splitlines()
    assert any("/gone/f" in line and "404" in line for line in lines)
    assert any("/bad/f" in line and "checksum mismatch" in line for line in lines)


def _serve_small_mnist(server, monkeypatch, n_train=5, n_test=3, corrupt=None):
    """Serve four small gzipped IDX files and point RESOURCES['mnist'] at them."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    md5 = {}
    for name, array in arrays.items():
        body = gzip.compress(_idx_bytes(array))
        md5[name + ".gz"] = hashlib.md5(body).hexdigest()
        server.files[f"/m2/{name}.gz"] = body if name != corrupt else body[:-1] + b"!"
    resource = mnist_module.Resource((server.base + "/m1/", server.base + "/m2/"), md5)
    monkeypatch.setitem(mnist_module.RESOURCES, "mnist", resource)
    return arrays


def test_load_mnist_downloads_when_asked(server, tmp_path, monkeypatch):
    arrays = _serve_small_mnist(server, monkeypatch)
    train, test = load_mnist(tmp_path, download=True, strict_sizes=False)
    np.testing.assert_array_equal(train.images[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(test.labels, arrays["t10k-labels-idx1-ubyte"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(a + ".gz" for a in arrays)
    # A second call finds the files and asks the network for nothing.
    requests = len(server.log)
    load_mnist(tmp_path, download=True, strict_sizes=False)
    assert len(server.log) == requests


def test_load_mnist_download_goes_to_funcbp_data(server, tmp_path, monkeypatch):
    _serve_small_mnist(server, monkeypatch)
    monkeypatch.setenv("FUNCBP_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    train, _ = load_mnist(download=True, strict_sizes=False)
    assert train.images.shape == (5, 28, 28, 1)
    assert (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_load_mnist_never_downloads_unless_asked(server, tmp_path, monkeypatch):
    _serve_small_mnist(server, monkeypatch)
    with pytest.raises(DataNotFoundError, match="download=True"):
        load_mnist(tmp_path, strict_sizes=False)
    assert server.log == []
    assert list(tmp_path.iterdir()) == []


def test_load_mnist_download_with_bad_checksum(server, tmp_path, monkeypatch):
    _serve_small_mnist(server, monkeypatch, corrupt="t10k-images-idx3-ubyte")
    with pytest.raises(DownloadError, match="t10k-images-idx3-ubyte.gz") as info:
        load_mnist(tmp_path, download=True, strict_sizes=False)
    assert "404" in str(info.value) and "checksum mismatch" in str(info.value)
    assert not (tmp_path / "t10k-images-idx3-ubyte.gz").exists()
    assert _leftovers(tmp_path) == []
