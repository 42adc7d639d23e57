"""qbench.fetch: the one download path (pooch), its cache and checksums, file:// mirrors, and
offline errors that name the URL, where the file goes and the command; CompressAI's zoo
weights through torch hub. Nothing here reaches beyond this machine: mirrors are files in
tmp_path, the HTTP servers listen on 127.0.0.1, unreachable URLs use a closed local port."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
import time
import urllib.request

import pytest
import torch

from qbench import fetch

UNREACHABLE = "http://127.0.0.1:9/x.bin"  # the discard port: nothing listens there


def offline() -> fetch.Offline:
    return fetch.Offline(place="copy x.bin into /some/folder by hand", command="run-this --now")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def mirror(tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "x.bin").write_bytes(b"the published bytes")
    return folder


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    stall = 0.0

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.stall:
            time.sleep(self.stall)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    """Joins its request threads on close: a request stalled past the client's timeout
    ends inside the test that made it. Left running, it failed writing to the closed
    socket during a later test of the same worker, and the traceback it printed (Python
    3.11 parses the source line to place its carets) raced that test's own ``ast.parse``:
    ``SystemError: AST constructor recursion depth mismatch``."""

    daemon_threads = False

    def handle_error(self, request, client_address):
        pass  # a client that gave up (the timeout test) is expected, not an error


@contextlib.contextmanager
def _serving():
    """An HTTP server on 127.0.0.1 (a free port) serving ``files`` (path: bytes)."""

    class Handler(_Handler):
        files: dict[str, bytes] = {}
        stall = 0.0

    httpd = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server():
    with _serving() as httpd:
        yield httpd


def test_a_request_stalled_past_its_timeout_ends_with_the_server():
    # the bug: the stalled request outlived its test and, in a later test of the same
    # worker, raised SystemError from that test's ast.parse (see _Server)
    with _serving() as httpd:
        httpd.RequestHandlerClass.files = {"/x": b"x"}
        httpd.RequestHandlerClass.stall = 2.0
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{httpd.url}/x", timeout=0.1)
    assert not [t for t in threading.enumerate() if "process_request" in t.name]


def test_a_file_mirror_is_copied_checked_and_then_kept_without_network(tmp_path, mirror):
    data = (mirror / "x.bin").read_bytes()
    dest = tmp_path / "cache" / "x.bin"
    got = fetch.fetch((mirror / "x.bin").as_uri(), dest, sha256(data), what="x", offline=offline())
    assert got == dest and dest.read_bytes() == data
    # present with the right digest: kept, the (unreachable) URL is never opened
    again = fetch.fetch(UNREACHABLE, dest, sha256(data), what="x", offline=offline())
    assert again == dest and dest.read_bytes() == data
    # present with another digest: fetched again from the mirror
    dest.write_bytes(b"stale")
    fetch.fetch((mirror / "x.bin").as_uri(), dest, sha256(data), what="x", offline=offline())
    assert dest.read_bytes() == data


def test_a_checksum_mismatch_says_what_was_expected_and_keeps_nothing(tmp_path, mirror):
    dest = tmp_path / "cache" / "x.bin"
    want = hashlib.sha1(b"other bytes").hexdigest()
    got = hashlib.sha1((mirror / "x.bin").read_bytes()).hexdigest()
    with pytest.raises(fetch.ChecksumError) as info:
        fetch.fetch(
            (mirror / "x.bin").as_uri(), dest, f"sha1:{want}", what="the x file", offline=offline()
        )
    msg = str(info.value)
    assert msg.startswith("the x file: checksum mismatch: file://")
    assert f"has SHA-1 {got}, expected {want}; the file was not kept" in msg
    assert list((tmp_path / "cache").iterdir()) == []  # no file, no temporary left


@pytest.mark.parametrize("where", ["refused", "missing file"])
def test_an_unreachable_url_names_the_url_the_place_and_the_command(tmp_path, where):
    url = UNREACHABLE if where == "refused" else (tmp_path / "no" / "x.bin").as_uri()
    with pytest.raises(fetch.FetchError) as info:
        fetch.fetch(url, tmp_path / "cache" / "x.bin", None, what="the x file", offline=offline())
    msg = str(info.value)
    assert msg.startswith(f"the x file: cannot fetch {url} (")
    assert "Connection refused" in msg if where == "refused" else "no such file" in msg
    assert "Without network here: copy x.bin into /some/folder by hand" in msg
    assert msg.endswith("Command: run-this --now")
    assert not (tmp_path / "cache" / "x.bin").exists()


def test_http_downloads_and_http_errors_and_timeouts(tmp_path, server):
    data = b"served over http"
    server.RequestHandlerClass.files["/x.bin"] = data
    dest = tmp_path / "cache" / "x.bin"
    fetch.fetch(f"{server.url}/x.bin", dest, sha256(data), what="x", offline=offline())
    assert dest.read_bytes() == data
    with pytest.raises(
        fetch.FetchError,
        match=r"cannot fetch http://127\.0\.0\.1:\d+/y\.bin "
        r"\(HTTP 404 Not Found\)\. Without network here",
    ):
        fetch.fetch(f"{server.url}/y.bin", tmp_path / "y.bin", None, what="y", offline=offline())
    server.RequestHandlerClass.stall = 2.0
    with pytest.raises(fetch.FetchError, match=r"\(timed out after 0\.3 s\)\. Without network"):
        fetch.fetch(
            f"{server.url}/x.bin",
            tmp_path / "z.bin",
            None,
            what="z",
            offline=offline(),
            timeout=0.3,
        )
    assert not (tmp_path / "y.bin").exists() and not (tmp_path / "z.bin").exists()


# -- CompressAI's zoo weights (torch hub's own download) -------------------------------


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch hub's folder in tmp_path (``torch.hub.set_dir``; put back afterwards)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)
    torch.hub.set_dir(str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_the_zoo_message_names_compressai_s_url_and_torch_hub_s_file(hub):
    from compressai.zoo.image import model_urls
    from qbench_plugins.compressai_backbones import zoo_weights_message

    url = model_urls["mbt2018-mean"]["mse"][3]
    assert url.startswith("https://") and url.endswith(".pth.tar")
    name = url.rsplit("/", 1)[1]
    msg = zoo_weights_message("mbt2018-mean", 3, OSError("[Errno 101] Network is unreachable"))
    assert msg.startswith(f"pretrained = 3 (mbt2018-mean): cannot fetch {url} (Network is")
    assert f"put {name} into {hub / 'checkpoints'} (torch hub's cache" in msg
    assert f"`curl -fL --create-dirs -o {hub / 'checkpoints' / name} {url}`" in msg


def test_the_zoo_loader_offline_raises_the_route(hub, monkeypatch, registry):
    """CompressAI's zoo loader and torch hub's download run for real; only the URL it
    resolves is a closed local port."""
    from compressai.zoo.image import model_urls

    name = model_urls["bmshj2018-factorized"]["mse"][2].rsplit("/", 1)[1]
    url = f"http://127.0.0.1:9/{name}"
    monkeypatch.setitem(model_urls["bmshj2018-factorized"]["mse"], 2, url)
    with pytest.raises(fetch.FetchError) as info:
        registry.build("backbone", "bmshj2018-factorized", pretrained=2)
    msg = str(info.value)
    path = hub / "checkpoints" / name
    assert msg.startswith(f"pretrained = 2 (bmshj2018-factorized): cannot fetch {url} (")
    assert "Connection refused" in msg and str(path) in msg and "curl" in msg
    assert not path.exists()
    # the file put there by hand is what the same loader then reads (no download); its
    # name carries its own SHA-256 prefix, as the published files' do
    import hashlib

    from compressai.models import FactorizedPrior

    torch.manual_seed(2)
    ref = FactorizedPrior(128, 192)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.parent / "weights.tmp"
    torch.save(ref.state_dict(), raw)
    name = (
        f"bmshj2018-factorized-prior-2-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth.tar"
    )
    raw.replace(path.parent / name)
    monkeypatch.setitem(model_urls["bmshj2018-factorized"]["mse"], 2, f"http://127.0.0.1:9/{name}")
    model = registry.build("backbone", "bmshj2018-factorized", pretrained=2)
    assert torch.equal(model.net.g_a[0].weight, ref.g_a[0].weight)
