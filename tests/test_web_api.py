"""``fmbot web``'s JSON API over real HTTP, against the running command (tests/web_server.py)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes import FakeOpenAI
from tests.web_server import WebServer, openai_env, run_fmbot, serving, web_env

TIMEOUT = httpx.Timeout(30.0)
TOKEN = "a-long-random-test-token-0123456789"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    with serving(web_env(tmp_path), tmp_path) as server:
        yield server


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, object]]]:
    """(event, data) of a text/event-stream, as they arrive."""
    name = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


async def send(
    client: httpx.AsyncClient, chat: str, text: str
) -> list[tuple[str, dict[str, object]]]:
    async with client.stream("POST", f"/api/chats/{chat}/messages", json={"text": text}) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [event async for event in events(r)]


async def test_a_message_streams_its_reply_and_is_stored(web: WebServer) -> None:
    async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
        assert (await client.get("/healthz")).status_code == 200
        got = await send(client, "first", "hello web channel")
        deltas = [data["text"] for name, data in got if name == "delta"]
        assert len(deltas) > 1  # streamed in pieces (echo:?chunks=4), not one block
        assert "".join(str(d) for d in deltas) == "echo: hello web channel"
        assert got[-1] == (
            "final",
            {"text": "echo: hello web channel", "status": "complete", "sources": []},
        )

        chats = (await client.get("/api/chats")).json()["chats"]
        assert [(c["chat"], c["turns"]) for c in chats] == [("first", 2)]
        chat = (await client.get("/api/chats/first")).json()
        assert chat["mode"] == "default"
        assert [(t["role"], t["text"], t["status"]) for t in chat["turns"]] == [
            ("user", "hello web channel", None),
            ("assistant", "echo: hello web channel", "complete"),
        ]

        gone = await client.delete("/api/chats/first")
        assert gone.status_code == 200 and "Deleted" in gone.json()["text"]
        assert (await client.get("/api/chats")).json()["chats"] == []
        assert (await client.get("/api/chats/first")).json()["turns"] == []


async def test_commands_answer_with_a_notice_and_final_none(web: WebServer) -> None:
    async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
        got = await send(client, "m", "/mode translator")
        assert got[0][0] == "notice" and "translator" in str(got[0][1]["text"])
        assert got[-1] == ("final", {"text": "", "status": "none", "sources": []})
        assert (await client.get("/api/chats/m")).json()["mode"] == "translator"
        listed = await send(client, "m", "/mode")
        assert "* translator" in str(listed[0][1]["text"])


async def test_bad_requests_say_what_to_send(web: WebServer) -> None:
    async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
        r = await client.post("/api/chats/x/messages", content=b"not json")
        assert r.status_code == 400 and "JSON object" in r.json()["error"]
        r = await client.post("/api/chats/x/messages", json={"text": "  "})
        assert r.status_code == 400 and "empty" in r.json()["error"]
        r = await client.post("/api/chats/x/messages", json={"text": 5})
        assert r.status_code == 400 and "'text' must be a str" in r.json()["error"]
        r = await client.put("/api/templates/default", json={"source": "x" * 1_000_001})
        assert r.status_code == 413 and "send less" in r.json()["error"]
        r = await client.get("/api/nothing")
        assert r.status_code == 404 and 'README "Web"' in r.json()["error"]
        r = await client.put("/api/chats/x")
        assert r.status_code == 405 and 'README "Web"' in r.json()["error"]
        r = await client.get("/api/chats/%1B%5B2J")  # ESC [2J: a name no one could type back
        assert r.status_code == 400


async def test_closing_the_stream_stops_the_turn_stored_as_stopped(tmp_path: Path) -> None:
    async with FakeOpenAI(stream_delay=0.3) as openai:
        env = openai_env(tmp_path, openai)
        with serving(env, tmp_path) as web:
            async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
                words = " ".join(f"word{i}" for i in range(40))  # 40 × 0.3 s: far from done
                url = "/api/chats/stop/messages"
                async with client.stream("POST", url, json={"text": words}) as r:
                    async for name, _ in events(r):
                        if name == "delta":
                            break  # the stream is closed with the reply under way
                async with asyncio.timeout(10):
                    await openai.disconnected.wait()  # the model's stream was closed too
                for _ in range(100):  # the stopped turn is saved just after the stream ends
                    if turns := (await client.get("/api/chats/stop")).json()["turns"]:
                        break
                    await asyncio.sleep(0.1)
            output = web.output()
        [user, bot] = turns
        assert user["text"] == words
        assert bot["status"] == "stopped"
        assert 0 < len(bot["text"]) < len(words)
        # A stop is no failure: the server logs no traceback for it (the turn's generator was
        # closed while its last step still ran in another task: "already running").
        assert "Exception in ASGI application" not in output, output
        assert "already running" not in output, output


async def test_templates_are_read_checked_saved_and_rendered(
    web: WebServer, tmp_path: Path
) -> None:
    path = tmp_path / "prompts" / "translator.yaml"
    original = path.read_bytes()
    async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
        listed = (await client.get("/api/templates")).json()
        assert "translator" in [t["name"] for t in listed["templates"]]
        got = (await client.get("/api/templates/translator")).json()
        assert got == {"name": "translator", "path": "translator.yaml", "source": original.decode()}

        lines = got["source"].splitlines(keepends=True)
        at = next(i for i, line in enumerate(lines) if "{{" in line)
        broken = "".join([*lines[:at], lines[at].replace("{{", "{{ oops(", 1), *lines[at + 1 :]])
        r = await client.put("/api/templates/translator", json={"source": broken})
        assert r.status_code == 422
        [error] = r.json()["errors"]
        assert error["line"] == at + 1 and "syntax error" in error["message"]
        assert path.read_bytes() == original  # untouched

        body = {"template": "translator", "message": "bonjour"}
        before = (await client.post("/api/render", json=body)).json()["messages"]
        assert before[-1]["role"] == "user" and "bonjour" in before[-1]["text"]
        assert "Always check twice." not in before[0]["text"]

        fixed = got["source"].replace("instruction: |", "instruction: |\n  Always check twice.", 1)
        assert fixed != got["source"]
        r = await client.put("/api/templates/translator", json={"source": fixed})
        assert r.status_code == 200, r.text
        assert path.read_text(encoding="utf-8") == fixed
        assert list(path.parent.glob(".*.tmp")) == []  # the temporary file was renamed
        after = (await client.post("/api/render", json=body)).json()["messages"]
        assert after[0]["text"].startswith("Always check twice.")


async def test_template_names_are_names_not_paths(web: WebServer, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
        for name in ("..", ".env", "..%2F..%2Fetc%2Fpasswd", "a%5Cb"):
            r = await client.get(f"/api/templates/{name}")
            assert r.status_code in (400, 404), name
            r = await client.put(f"/api/templates/{name}", json={"source": "name: x\n"})
            assert r.status_code in (400, 404, 405), name
        r = await client.put(
            "/api/templates/translator",
            json={"source": "name: default\ndescription: d\ninstruction: hi\n"},
        )
        assert r.status_code == 422
        assert "keep `name: translator`" in r.json()["errors"][0]["message"]
        r = await client.post("/api/render", json={"template": "nope", "message": "x"})
        assert r.status_code == 404 and "GET /api/templates" in r.json()["error"]
        r = await client.post(
            "/api/render", json={"template": "translator", "message": "x", "variables": {"zz": 1}}
        )
        assert r.status_code == 422
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "home",
        "prompts",
        *[p.name for p in tmp_path.glob("web-*.log")],
    ]


async def test_other_sites_and_hosts_are_refused(web: WebServer) -> None:
    async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
        for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"}):
            r = await client.post("/api/chats/x/messages", json={"text": "hi"}, headers=headers)
            assert r.status_code == 403, headers
            r = await client.delete("/api/chats/x", headers=headers)
            assert r.status_code == 403, headers
        own = {"Origin": web.url}
        assert (await client.delete("/api/chats/x", headers=own)).status_code == 200
        # DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 sends its own Host.
        r = await client.get("/api/chats", headers={"Host": "evil.example"})
        assert r.status_code == 403
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp


async def test_pages_load_only_their_own_scripts(web: WebServer) -> None:
    async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        tags = re.findall(r"<(?:script|link)\b[^>]*>", page.text)
        assert tags and all(re.search(r'(?:src|href)="/static/', tag) for tag in tags), tags
        assert "<script>" not in page.text and " on" not in "".join(tags)  # nothing inline
        for tag in tags:
            url = re.search(r'(?:src|href)="([^"]+)"', tag)
            assert url is not None
            asset = await client.get(url[1])
            assert asset.status_code == 200, url[1]
            if url[1].endswith(".js"):
                # Modules import each other by relative path only: no third-party requests.
                imports = re.findall(r'from "([^"]+)"', asset.text)
                assert all(i.startswith("./") for i in imports), imports


def test_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    result = run_fmbot(web_env(tmp_path), "web", "--listen", "0.0.0.0:8000")
    assert result.returncode == 2
    assert "FMBOT_WEB_TOKEN" in result.stderr and "127.0.0.1" in result.stderr
    short = "short-secret"
    result = run_fmbot(web_env(tmp_path, FMBOT_WEB_TOKEN=short), "web")
    assert result.returncode == 2 and "at least 16" in result.stderr
    assert short not in result.stderr
    result = run_fmbot(web_env(tmp_path), "web", "--listen", "nowhere")
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


async def test_with_a_token_the_api_wants_it_and_pages_log_in(tmp_path: Path) -> None:
    with serving(web_env(tmp_path, FMBOT_WEB_TOKEN=TOKEN), tmp_path) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
            assert (await client.get("/healthz")).status_code == 200
            r = await client.get("/api/chats")
            assert r.status_code == 401 and "Bearer" in r.json()["error"]
            wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
            assert (await client.get("/api/chats", headers=wrong)).status_code == 401
            right = {"Authorization": f"Bearer {TOKEN}"}
            assert (await client.get("/api/chats", headers=right)).status_code == 200

            r = await client.get("/")
            assert r.status_code == 303 and r.headers["location"] == "/login"
            assert (await client.post("/login", data={"token": "nope"})).status_code == 401
            r = await client.post("/login", data={"token": TOKEN})
            assert r.status_code == 303
            cookie = r.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            assert TOKEN.lower() not in cookie  # the cookie is derived, not the token
            got = await send(client, "t", "with a cookie")  # client keeps the cookie
            assert got[-1][1]["status"] == "complete"
    assert TOKEN not in web.output()


async def test_drafts_are_checked_rendered_and_run_without_saving(tmp_path: Path) -> None:
    slow = "echo:?chunks=2&delay=0.2"
    with serving(web_env(tmp_path, FMBOT_WEB_MODELS=slow), tmp_path) as web:
        path = tmp_path / "prompts" / "translator.yaml"
        original = path.read_bytes()
        async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
            source = (await client.get("/api/templates/translator")).json()["source"]
            draft = source.replace("instruction: |", "instruction: |\n  A draft line.", 1)
            assert draft != source
            check = "/api/templates/translator/check"
            r = await client.post(check, json={"source": draft})
            assert r.status_code == 200 and r.json()["errors"] == []
            listed = (await client.get("/api/templates")).json()["templates"]
            declared = next(t["variables"] for t in listed if t["name"] == "translator")
            assert r.json()["variables"] == declared
            broken = draft.replace("A draft line.", "A draft {% if %} line.")
            r = await client.post(check, json={"source": broken})
            [error] = r.json()["errors"]
            assert broken.splitlines()[error["line"] - 1].strip() == "A draft {% if %} line."
            assert r.json()["variables"] is None

            body = {"template": "translator", "source": draft, "message": "bonjour"}
            rendered = (await client.post("/api/render", json=body)).json()["messages"]
            assert rendered[0]["text"].startswith("A draft line.")
            r = await client.post("/api/render", json=body | {"source": broken})
            assert r.status_code == 422 and r.json()["errors"][0]["line"] == error["line"]

            offered = (await client.get("/api/models")).json()["models"]
            assert offered == ["echo:?chunks=4", slow]
            async with client.stream("POST", "/api/run", json=body | {"model": slow}) as r:
                assert r.status_code == 200
                got = [event async for event in events(r)]
            deltas = [str(data["text"]) for name, data in got if name == "delta"]
            name, final = got[-1]
            assert name == "final" and final["status"] == "complete"
            assert "".join(deltas) == final["text"] == f"echo: {rendered[-1]['text']}"
            assert len(deltas) == 2
            assert isinstance(final["input_tokens"], int) and final["input_tokens"] > 0
            assert isinstance(final["output_tokens"], int) and final["output_tokens"] > 0
            assert isinstance(final["latency_ms"], int) and final["latency_ms"] >= 200
            assert isinstance(final["first_token_ms"], int) and final["first_token_ms"] >= 200

            r = await client.post("/api/run", json=body | {"model": "echo:?delay=9"})
            assert r.status_code == 400 and "FMBOT_WEB_MODELS" in r.json()["error"]
        assert path.read_bytes() == original  # nothing was saved
        assert await stored_chats(web) == []


async def stored_chats(web: WebServer) -> list[object]:
    """Runs are not turns of a chat: nothing is stored."""
    async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
        chats: list[object] = (await client.get("/api/chats")).json()["chats"]
        return chats


async def test_sigterm_ends_a_streaming_reply_stored_as_stopped(tmp_path: Path) -> None:
    async with FakeOpenAI(stream_delay=0.3) as openai:
        env = openai_env(tmp_path, openai)
        with serving(env, tmp_path) as web:
            async with httpx.AsyncClient(base_url=web.url, timeout=TIMEOUT) as client:
                words = " ".join(f"word{i}" for i in range(100))  # 30 s: beyond the grace
                url = "/api/chats/term/messages"
                async with client.stream("POST", url, json={"text": words}) as r:
                    got = []
                    async with asyncio.timeout(10):  # well before the reply's 30 s
                        async for name, data in events(r):
                            got.append((name, data))
                            if len(got) == 1:
                                web.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(web.proc.wait, 15)
        assert code == 0, web.output()
    # The stream ended properly: a notice, then the final event with what was said.
    assert got[0][0] == "delta"
    (notice, said), (final, end) = got[-2:]
    assert notice == "notice" and "shutting down" in str(said["text"])
    shown = "".join(str(data["text"]) for name, data in got if name == "delta")
    assert final == "final" and end == {"text": shown, "status": "incomplete", "sources": []}
    history = run_fmbot(env, "history", "web:term")
    assert history.returncode == 0, history.stderr
    assert history.stdout.startswith(f"user: {words}\nassistant (stopped): {shown}")
