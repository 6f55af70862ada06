"""The downloader against a real HTTP server on 127.0.0.1 that drops, corrupts and ignores Range.

Nothing here touches the network beyond the loopback server each test starts, and the retry
backoff is set to zero so failures are fast.
"""

import hashlib
import http.server
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import mobilenets.zoo.download as download_module
from mobilenets.core.errors import MobileNetsError
from mobilenets.zoo.download import CACHE_ENV, cache_dir, download, file_digest

PAYLOAD = random.Random(0).randbytes(200_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
NAME = "payload.bin"


@dataclass
class Server:
    """What the test server serves and how it misbehaves; records each request's Range header.

    ``drops``: how many more responses announce their full Content-Length but close after
    ``sent`` of it (a fraction). ``honour_range``: answer ``Range: bytes=N-`` with 206 (else
    always 200 and the whole body). ``corrupt``: flip the bytes of the served file.
    ``status``: answer every request with it.
    """

    url: str = ""
    drops: float = 0
    sent: float = 0.5
    honour_range: bool = True
    corrupt: bool = False
    status: int | None = None
    ranges: list = field(default_factory=list)  # None for a request without Range
    answers: list = field(default_factory=list)  # the status of each response


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        state: Server = self.server.state
        requested = self.headers.get("Range")
        state.ranges.append(requested)
        if state.status is not None:
            state.answers.append(state.status)
            self.send_error(state.status)
            return
        body = bytes(b ^ 0xFF for b in PAYLOAD) if state.corrupt else PAYLOAD
        start = 0
        if requested and state.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested)[1])
            if start >= len(body):
                state.answers.append(416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        state.answers.append(206 if start else 200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if state.drops > 0:
            state.drops -= 1
            self.wfile.write(chunk[: int(len(chunk) * state.sent)])
            self.close_connection = True
            return
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(download_module, "BACKOFF", 0)
    monkeypatch.setenv("no_proxy", "*")  # a proxy in the environment must not see 127.0.0.1


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}/{NAME}")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def partial_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.part")


def test_download_writes_the_verified_file_and_then_reuses_it(server, tmp_path, capsys):
    target = tmp_path / "deep" / "folder" / NAME
    assert download(server.url, target, sha256=SHA256, progress=False) == target
    assert target.read_bytes() == PAYLOAD
    assert sorted(p.name for p in target.parent.iterdir()) == [NAME]  # no .part left
    assert server.ranges == [None]
    assert capsys.readouterr().err == ""  # progress=False draws no bar
    # Present and matching: no request at all.
    assert download(server.url, str(target), sha256=SHA256, progress=False) == target
    assert download(server.url, target, progress=False) == target
    assert len(server.ranges) == 1


def test_progress_bar_names_the_file(server, tmp_path, capsys):
    target = tmp_path / NAME
    download(server.url, target, sha256=SHA256, progress=True)
    assert target.read_bytes() == PAYLOAD
    assert NAME in capsys.readouterr().err


def test_file_digest_reads_in_chunks(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(PAYLOAD)  # three chunks of 64 KiB and a remainder
    assert file_digest(path) == SHA256
    assert file_digest(path, "md5") == MD5


@pytest.mark.parametrize(
    "digests",
    [
        {"sha256": SHA256},
        {"sha256": SHA256[:8]},
        {"sha256": SHA256.upper()},
        {"md5": MD5},
        {"sha256": SHA256[:8], "md5": MD5},
    ],
)
def test_full_digests_and_sha256_prefixes_are_accepted(server, tmp_path, digests):
    target = tmp_path / NAME
    download(server.url, target, progress=False, **digests)
    assert target.read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    "digests, shown",
    [
        ({"sha256": "0" * 64}, f"SHA-256 {SHA256}, expected {'0' * 64}"),
        ({"sha256": "deadbeef"}, f"SHA-256 {SHA256}, expected deadbeef"),
        ({"md5": "0" * 32}, f"MD5 {MD5}, expected {'0' * 32}"),
    ],
)
def test_wrong_digest_is_refused_and_the_part_removed(server, tmp_path, digests, shown):
    target = tmp_path / NAME
    with pytest.raises(MobileNetsError) as error:
        download(server.url, target, progress=False, **digests)
    assert str(error.value) == f"download of {server.url} is corrupt: {shown}"
    assert list(tmp_path.iterdir()) == []  # neither the final name nor the .part
    assert len(server.ranges) == 1  # a corrupt file is not fetched again


def test_corrupt_file_from_the_server_is_refused(server, tmp_path):
    server.corrupt = True
    target = tmp_path / NAME
    with pytest.raises(MobileNetsError, match=f"is corrupt: SHA-256 .*, expected {SHA256}"):
        download(server.url, target, sha256=SHA256, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_resumes_with_a_range_request(server, tmp_path):
    server.drops = 1
    target = tmp_path / NAME
    download(server.url, target, sha256=SHA256, progress=False)
    assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert server.answers == [200, 206]
    assert target.read_bytes() == PAYLOAD
    assert not partial_of(target).exists()


def test_server_ignoring_range_restarts_the_partial_file(server, tmp_path):
    server.drops, server.honour_range = 1, False
    target = tmp_path / NAME
    download(server.url, target, sha256=SHA256, progress=False)
    assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert server.answers == [200, 200]  # the whole body again: appended, it would not verify
    assert target.read_bytes() == PAYLOAD


def test_failure_after_all_retries_keeps_the_part_for_the_next_run(server, tmp_path):
    server.drops = float("inf")
    target = tmp_path / NAME
    with pytest.raises(MobileNetsError) as error:
        download(server.url, target, sha256=SHA256, retries=2, progress=False)
    message = str(error.value)
    assert message.startswith(f"download of {server.url} failed after 3 attempts: ")
    assert f"the partial file {partial_of(target)} is kept; run again to resume" in message
    assert len(server.ranges) == 3
    assert not target.exists()
    # Each attempt got half of what was left: 1/2 + 1/4 + 1/8 of the payload.
    received = len(PAYLOAD) // 2 + len(PAYLOAD) // 4 + len(PAYLOAD) // 8
    assert partial_of(target).read_bytes() == PAYLOAD[:received]

    server.drops = 0
    download(server.url, target, sha256=SHA256, progress=False)
    assert server.ranges[-1] == f"bytes={received}-"
    assert target.read_bytes() == PAYLOAD
    assert not partial_of(target).exists()


def test_complete_part_answered_416_is_verified_and_kept(server, tmp_path):
    target = tmp_path / NAME
    partial_of(target).write_bytes(PAYLOAD)  # an earlier run stopped before the rename
    download(server.url, target, sha256=SHA256, progress=False)
    assert server.answers == [416]
    assert target.read_bytes() == PAYLOAD


def test_part_larger_than_the_file_is_started_over(server, tmp_path):
    target = tmp_path / NAME
    partial_of(target).write_bytes(PAYLOAD + b"left from another version")
    download(server.url, target, sha256=SHA256, progress=False)
    assert server.answers == [416, 200]
    assert target.read_bytes() == PAYLOAD


@pytest.mark.parametrize("status", [403, 404])
def test_client_errors_fail_at_once(server, tmp_path, status):
    server.status = status
    target = tmp_path / NAME
    expected = f"download of {server.url} failed: HTTP Error {status}"
    with pytest.raises(MobileNetsError, match=expected):
        download(server.url, target, sha256=SHA256, progress=False)
    assert len(server.ranges) == 1
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried(server, tmp_path):
    server.status = 503
    target = tmp_path / NAME
    with pytest.raises(MobileNetsError, match="failed after 4 attempts: HTTP Error 503") as error:
        download(server.url, target, sha256=SHA256, progress=False)
    assert len(server.ranges) == 4
    assert "kept" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_drop_before_the_first_byte_leaves_no_empty_part(server, tmp_path):
    server.drops, server.sent = float("inf"), 0
    expected = "failed after 2 attempts: connection closed after 0 of"
    with pytest.raises(MobileNetsError, match=expected) as error:
        download(server.url, tmp_path / NAME, sha256=SHA256, retries=1, progress=False)
    assert "kept" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_fails_after_retries(tmp_path):
    with http.server.HTTPServer(("127.0.0.1", 0), Handler) as closed:  # bound, then closed
        port = closed.server_address[1]
    url = f"http://127.0.0.1:{port}/{NAME}"
    with pytest.raises(MobileNetsError, match=f"download of {url} failed after 2 attempts"):
        download(url, tmp_path / NAME, retries=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_with_the_wrong_digest_is_replaced(server, tmp_path, caplog):
    target = tmp_path / NAME
    target.write_bytes(b"an older version")
    download(server.url, target, sha256=SHA256, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert len(server.ranges) == 1
    stale = hashlib.sha256(b"an older version").hexdigest()
    assert caplog.messages == [
        f"{target} does not match: SHA-256 {stale}, expected {SHA256}; downloading it again"
    ]


def test_existing_file_is_kept_when_the_replacement_is_corrupt(server, tmp_path):
    server.corrupt = True
    target = tmp_path / NAME
    target.write_bytes(b"an older version")
    with pytest.raises(MobileNetsError, match="is corrupt"):
        download(server.url, target, sha256=SHA256, progress=False)
    assert target.read_bytes() == b"an older version"  # replaced only by a verified file
    assert not partial_of(target).exists()


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir() == tmp_path / "xdg" / "mobilenets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mobilenets"


@pytest.mark.parametrize(
    "digests, allowed",
    [
        (
            {"sha256": "abc1234"},
            "sha256 must be a hex digest of 64 digits or a prefix of at least 8",
        ),
        ({"sha256": "g" * 64}, "sha256 must be"),
        ({"sha256": "0" * 65}, "sha256 must be"),
        ({"md5": "0" * 31}, "md5 must be a hex digest of 32 digits"),
        ({"md5": "not-a-digest"}, "md5 must be"),
    ],
)
def test_bad_digest_argument_names_the_value(server, tmp_path, digests, allowed):
    (value,) = digests.values()
    with pytest.raises(MobileNetsError) as error:
        download(server.url, tmp_path / NAME, progress=False, **digests)
    assert str(error.value).startswith(allowed)
    assert str(error.value).endswith(f"got {value!r}")
    assert server.ranges == []  # refused before any request


@pytest.mark.parametrize(
    "url, options, shown",
    [
        ("not a url", {}, "cannot download 'not a url'"),
        ("http://127.0.0.1/x", {"retries": -1}, "retries must be an integer >= 0; got -1"),
    ],
)
def test_bad_url_or_retries_is_refused(tmp_path, url, options, shown):
    with pytest.raises(MobileNetsError, match=re.escape(shown)):
        download(url, tmp_path / NAME, progress=False, **options)
    assert list(tmp_path.iterdir()) == []
