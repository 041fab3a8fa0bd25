"""Access control: SO_PEERCRED allow-list on the Unix socket, bearer token on loopback TCP."""

from __future__ import annotations

import os

import httpx

from tests.helpers import one_model_config, tcp_listener

HELLO = {"messages": [{"role": "user", "content": "hi"}]}


async def test_uid_not_in_allow_list_gets_403(fake_openai, start_daemon, short_dir) -> None:
    fake = await fake_openai()
    other = os.getuid() + 4242
    d = await start_daemon(one_model_config(fake.url), name="acl")
    # rewrite the daemon section and reload: the allow-list applies to live traffic
    path = short_dir / "acl.toml"
    text = path.read_text().replace('[daemon]\n', f'[daemon]\nallowed_uids = [{other}]\n', 1)
    path.write_text(text)
    assert d.sup.reload()
    r = await d.http.post("/v1/chat/completions", json=HELLO)
    assert r.status_code == 403
    assert f"uid {os.getuid()}" in r.json()["error"]["message"]
    assert fake.requests == []
    path.write_text(text.replace(f"allowed_uids = [{other}]", f"allowed_uids = [{os.getuid()}]"))
    assert d.sup.reload()
    r = await d.http.post("/v1/chat/completions", json=HELLO)
    assert r.status_code == 200



async def test_tcp_listener_requires_token(fake_openai, start_daemon, short_dir) -> None:
    fake = await fake_openai()
    port, tcp = tcp_listener(short_dir)
    body = tcp + one_model_config(fake.url)
    # the fixture writes the [daemon] table first, so these keys land in it
    d = await start_daemon(body)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as tcp:
        r = await tcp.post("/v1/chat/completions", json=HELLO)
        assert r.status_code == 401
        assert "tcp_token_file" in r.json()["error"]["message"]
        r = await tcp.post("/v1/chat/completions", json=HELLO,
                           headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        # unrouted paths and methods too: no 404 or 405 before the token is checked
        for method, path in (("GET", "/nope"), ("GET", "/v1/chat/completions")):
            r = await tcp.request(method, path)
            assert r.status_code == 401, (method, path)
        r = await tcp.get("/nope", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 404
        r = await tcp.get("/v1/chat/completions", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 405
    # the Unix socket needs no token
    r = await d.http.post("/v1/chat/completions", json=HELLO)
    assert r.status_code == 200
