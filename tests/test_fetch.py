"""Fetcher over real HTTP.

A stdlib server on 127.0.0.1 stands in for Label Studio and for a foreign image host: it serves
bytes and records request headers, to check our URL mapping and auth-header logic. The real
Label Studio 1.23.2 is exercised by the e2e suite.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
from PIL import Image

from ml_backend.config import Settings
from ml_backend.data.fetch import DataError, Fetcher

KEY = "legacy-secret-key-123"


def png_bytes(color=(255, 0, 0), size=(4, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


PNG = png_bytes()


def make_jwt(claims: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(claims)}.c2ln"


class Server:
    """routes: "/path?query" (or "/path") -> (status, body[, headers]) or a callable(handler) returning that."""

    def __init__(self):
        self.routes: dict = {}
        self.requests: list[tuple[str, str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                server.requests.append((self.command, self.path, dict(self.headers)))
                route = server.routes.get(self.path) or server.routes.get(self.path.split("?")[0])
                status, body, headers = 404, b'{"detail": "Not found."}', {}
                if route is not None:
                    out = route(self) if callable(route) else route
                    if out is None:  # the route wrote its own response
                        return
                    status, body = out[:2]
                    headers = out[2] if len(out) > 2 else {}
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading (size limit): expected

            do_GET = do_POST = do_PATCH = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads, self.httpd.block_on_close = True, False  # keep-alive clients linger
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def auth_headers(self) -> list[str | None]:
        return [h.get("Authorization") for _, _, h in self.requests]


@pytest.fixture
def ls():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def other():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def fetcher(url: str, key: str = KEY, **kw) -> Fetcher:
    return Fetcher(Settings(label_studio_url=url, label_studio_api_key=key, fetch_timeout=kw.pop("timeout", 5.0), **kw))


def test_data_uri_base64_and_percent_encoded():
    f = fetcher("")
    assert f.fetch("data:image/png;base64," + base64.b64encode(PNG).decode()) == PNG
    # unpadded, with line breaks, as some exporters write it
    b64 = base64.b64encode(PNG).decode().rstrip("=")
    assert f.fetch("data:image/png;base64," + b64[:10] + "\n" + b64[10:]) == PNG
    assert f.fetch("data:text/plain," + quote("héllo, wörld")) == "héllo, wörld".encode()
    assert f.fetch("data:," + quote(PNG)) == PNG
    with pytest.raises(DataError, match="base64"):
        f.fetch("data:image/png;base64,@@@not base64@@@")
    with pytest.raises(DataError, match="comma"):
        f.fetch("data:image/png;base64")


def test_http_url_to_foreign_host_gets_no_auth(ls, other):
    other.routes["/img.png"] = (200, PNG)
    assert fetcher(ls.url).fetch(other.url + "/img.png?sig=abc") == PNG
    assert other.auth_headers() == [None]


def test_http_url_on_label_studio_origin_gets_token(ls):
    ls.routes["/data/upload/3/x.png"] = (200, PNG)
    assert fetcher(ls.url + "/").fetch(ls.url + "/data/upload/3/x.png") == PNG
    assert ls.auth_headers() == [f"Token {KEY}"]


def test_upload_path_uses_storage_proxy_with_token(ls):
    ls.routes["/storage-data/uploaded/?filepath=upload/3/abc-cat.png"] = (200, PNG)
    f = fetcher(ls.url)
    assert f.fetch("/data/upload/3/abc-cat.png") == PNG
    assert f.fetch("upload/3/abc-cat.png") == PNG
    assert [p for _, p, _ in ls.requests] == ["/storage-data/uploaded/?filepath=upload/3/abc-cat.png"] * 2
    assert ls.auth_headers() == [f"Token {KEY}"] * 2


def test_upload_path_falls_back_to_data_upload(ls):
    ls.routes["/data/upload/3/cat.png"] = (200, PNG)
    assert fetcher(ls.url).fetch("/data/upload/3/cat.png") == PNG
    assert [p for _, p, _ in ls.requests] == ["/storage-data/uploaded/?filepath=upload/3/cat.png",
                                              "/data/upload/3/cat.png"]


def test_404_is_a_data_error_with_status_and_no_key(ls):
    with pytest.raises(DataError) as info:
        fetcher(ls.url).fetch("/data/upload/3/missing.png")
    assert info.value.status == 404
    assert "404" in str(info.value) and KEY not in str(info.value)
    with pytest.raises(DataError) as info:
        fetcher(ls.url).fetch(ls.url + "/nothing.png")
    assert info.value.status == 404


def test_401_with_legacy_token_explains_and_hides_key(ls):
    ls.routes["/data/upload/1/a.png"] = (401, {"detail": "legacy token authentication has been disabled"})
    with pytest.raises(DataError) as info:
        fetcher(ls.url).fetch(ls.url + "/data/upload/1/a.png")
    assert info.value.status == 401
    assert "personal access token" in str(info.value) and KEY not in str(info.value)


def test_personal_access_token_is_exchanged_refreshed_and_retried(ls):
    pat = make_jwt({"token_type": "refresh", "exp": time.time() + 86400})
    issued: list[str] = []
    valid: set[str] = set()

    def refresh(h):
        assert json.loads(h.body) == {"refresh": pat}
        # the first access token has already expired: the next fetch must refresh before sending
        token = make_jwt({"token_type": "access", "n": len(issued), "exp": time.time() + (-5 if not issued else 600)})
        issued.append(token)
        valid.add(token)
        return 200, {"access": token}

    def image(h):
        token = (h.headers.get("Authorization") or "").removeprefix("Bearer ")
        return (200, PNG) if token in valid else (401, {"detail": "Given token not valid"})

    ls.routes["/api/token/refresh/"] = refresh
    ls.routes["/img.png"] = image
    f = fetcher(ls.url, key=pat)
    assert f.fetch("/img.png") == PNG  # refresh 1
    assert f.fetch("/img.png") == PNG  # token 1 expired -> refresh 2
    assert f.fetch("/img.png") == PNG  # token 2 still good
    assert len(issued) == 2
    valid.clear()  # Label Studio revoked it (e.g. restarted with a new secret): 401, refresh, retry once
    assert f.fetch("/img.png") == PNG
    assert len(issued) == 3
    image_auth = [a for m, p, h in ls.requests if p == "/img.png" for a in [h.get("Authorization")]]
    assert image_auth == [f"Bearer {t}" for t in (issued[0], issued[1], issued[1], issued[1], issued[2])]
    assert pat not in " ".join(a or "" for a in ls.auth_headers())  # the PAT itself is never a Bearer


def test_refused_personal_access_token(ls):
    pat = make_jwt({"token_type": "refresh", "exp": time.time() + 86400})
    ls.routes["/api/token/refresh/"] = (401, {"detail": "Token is blacklisted"})
    with pytest.raises(DataError) as info:
        fetcher(ls.url, key=pat).fetch("/data/upload/1/a.png")
    assert info.value.status == 401 and "personal access token" in str(info.value)
    assert pat not in str(info.value)


def test_relative_path_without_label_studio_url():
    with pytest.raises(DataError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        fetcher("", key="").fetch("/data/upload/1/a.png")
    with pytest.raises(DataError, match="LABEL_STUDIO_API_KEY"):
        fetcher("http://127.0.0.1:9", key="").fetch("/data/local-files/?d=a.png")


def test_local_files_from_disk_and_traversal(ls, tmp_path):
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "a b.png").write_bytes(PNG)
    (tmp_path / "secret.txt").write_text("secret")
    f = fetcher(ls.url, local_files_root=str(root))  # LOCAL_FILES_DOCUMENT_ROOT
    assert f.fetch("/data/local-files/?d=imgs/a%20b.png") == PNG
    assert f.fetch("/data/local-files/?d=/imgs/a%20b.png") == PNG
    assert ls.requests == []  # read from disk
    for bad in ("../secret.txt", "imgs/../../secret.txt", "%2E%2E/secret.txt"):
        with pytest.raises(DataError, match="outside"):
            f.fetch("/data/local-files/?d=" + bad)
    # not on this disk: ask Label Studio
    ls.routes["/data/local-files/?d=imgs/other.png"] = (200, PNG)
    assert f.fetch("/data/local-files/?d=imgs/other.png") == PNG
    assert ls.auth_headers() == [f"Token {KEY}"]


def test_an_unreadable_local_file_is_a_data_error(ls, tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(PNG)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("ml_backend.data.fetch.open", refuse, raising=False)  # root reads a chmod 000 file
    with pytest.raises(DataError, match="cannot be read .Permission denied"):
        fetcher(ls.url, local_files_root=str(tmp_path)).fetch("/data/local-files/?d=a.png")


def test_local_files_without_root_download(ls):
    ls.routes["/data/local-files/?d=../x.png"] = (200, PNG)  # Label Studio itself guards its root
    assert fetcher(ls.url).fetch("/data/local-files/?d=../x.png") == PNG


def test_cloud_uri_goes_through_presign(ls, other):
    other.routes["/bucket/k.png"] = (200, PNG)
    uri = "s3://bucket/dir/k.png"
    enc = base64.urlsafe_b64encode(uri.encode()).decode()
    ls.routes[f"/tasks/7/presign/?fileuri={enc}"] = (303, b"", {"Location": other.url + "/bucket/k.png?X-Sig=s"})
    f = fetcher(ls.url)
    assert f.fetch(uri, task_id=7) == PNG
    assert ls.auth_headers() == [f"Token {KEY}"]
    assert other.auth_headers() == [None]  # the Token never leaves Label Studio's origin
    with pytest.raises(DataError, match="task id"):
        f.fetch("gs://bucket/k.png")


def test_size_limit_and_timeout(ls):
    ls.routes["/big"] = (200, b"x" * 5000)

    def chunked(h):  # no Content-Length: the limit is enforced while reading
        h.send_response(200)
        h.end_headers()
        h.close_connection = True
        try:
            h.wfile.write(b"y" * 5000)
        except (BrokenPipeError, ConnectionResetError):
            pass

    ls.routes["/chunked"] = chunked

    def slow(h):
        time.sleep(1.0)
        return 200, PNG

    ls.routes["/slow"] = slow
    f = fetcher(ls.url, max_body_bytes=1000)
    with pytest.raises(DataError, match="MAX_BODY_BYTES"):
        f.fetch("/big")
    with pytest.raises(DataError, match="MAX_BODY_BYTES"):
        f.fetch(ls.url + "/chunked")
    with pytest.raises(DataError, match="MAX_BODY_BYTES"):
        f.fetch("data:;base64," + base64.b64encode(b"z" * 2000).decode())
    with pytest.raises(DataError, match="FETCH_TIMEOUT"):
        fetcher(ls.url, timeout=0.2).fetch("/slow")


def test_unsupported_and_unreachable():
    f = fetcher("")
    with pytest.raises(DataError, match="unsupported"):
        f.fetch("images/cat.png")
    with pytest.raises(DataError, match="empty"):
        f.fetch("")
    with pytest.raises(DataError, match="cannot fetch") as info:
        fetcher("http://127.0.0.1:9").fetch("http://127.0.0.1:9/x.png")
    assert KEY not in str(info.value)
