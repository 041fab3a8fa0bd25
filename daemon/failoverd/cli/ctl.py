"""`failoverctl`: the daemon's command-line client over its Unix socket.

Exit codes: 0 ok, 1 the daemon said no (HTTP error), 2 the daemon is unreachable.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import orjson

DEFAULT_SOCKET = os.environ.get("FAILOVERD_SOCKET", "/run/failoverd/failoverd.sock")


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("failoverd", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class Unreachable(Exception):
    pass


class Refused(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(status)


def _request(sock: str, method: str, path: str, body: Any = None,
             timeout: float = 30.0) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = UnixConnection(sock, timeout)
    data = orjson.dumps(body) if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    try:
        conn.request(method, path, body=data, headers=headers)
        return conn, conn.getresponse()
    except OSError as exc:
        conn.close()
        raise Unreachable(f"cannot reach failoverd at {sock}: {exc}") from exc


def call(sock: str, method: str, path: str, body: Any = None) -> Any:
    conn, resp = _request(sock, method, path, body)
    try:
        raw = resp.read()
    finally:
        conn.close()
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = raw.decode("utf-8", "replace")
    if resp.status >= 400:
        raise Refused(resp.status, parsed)
    return parsed


def _ago(seconds: Any) -> str:
    return "-" if seconds is None else f"{seconds:.0f}s"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) if c is not None else "-" for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def model_path(model_id: str) -> str:
    return quote(model_id, safe="/:")


def show_status(data: dict[str, Any]) -> str:
    out = [f"failoverd {data.get('version', '')} on {data.get('node', '?')}: "
           f"{data.get('health', '?')}, {data.get('inflight', 0)} in flight"]
    models = data.get("models", {})
    rows = [(mid, m.get("state"), m.get("reason"), m.get("consecutive_failures"),
             m.get("failure_rate"), (m.get("latency") or {}).get("p50"),
             ((m.get("last_probe") or {}).get("ok")), m.get("inflight"))
            for mid, m in models.items()]
    out.append(table(rows, ("model", "state", "reason", "fails", "rate", "p50", "probe_ok",
                            "inflight")))
    chains = data.get("chains", {})
    if chains:
        out.append("")
        out.append(table([(n, c.get("head"), " > ".join(c.get("models", [])))
                          for n, c in chains.items()], ("chain", "head", "models")))
    return "\n".join(out)


def show_models(data: dict[str, Any]) -> str:
    rows = [(m["id"], m.get("state"), m.get("tier"), m.get("context_window"),
             ",".join(m.get("capabilities") or []))
            for m in data.get("data", []) if "chain" not in m]
    return table(rows, ("model", "state", "tier", "context", "capabilities"))


def show_select(data: dict[str, Any]) -> str:
    rows = [(c.get("model"), "yes" if c.get("eligible") else "no", c.get("reason") or "")
            for c in data.get("candidates", [])]
    head = f"route: {data.get('route', '-')}"
    return head + "\n" + table(rows, ("model", "eligible", "reason"))


def follow_events(sock: str, as_json: bool, follow: bool) -> int:
    path = "/v1/events" if follow else "/v1/events?recent=1"
    conn, resp = _request(sock, "GET", path, timeout=3600 if follow else 30)
    if resp.status >= 400:
        raise Refused(resp.status, resp.read().decode("utf-8", "replace"))
    try:
        for event in _sse(resp):
            if as_json:
                print(orjson.dumps(event).decode(), flush=True)
            else:
                extra = " ".join(f"{k}={v}" for k, v in event.items()
                                 if k not in ("id", "type", "time", "node"))
                print(f"{event.get('time', '')} {event.get('type', '')} {extra}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()
    return 0


def _sse(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    for raw in resp:
        line = raw.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            try:
                event = orjson.loads(line[5:].strip())
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield event


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="failoverctl", description="Control a failoverd daemon.")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="daemon socket (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="models, breakers, chains")
    sub.add_parser("models", help="configured models and their state")
    sub.add_parser("health", help="ok / degraded / down")
    ev = sub.add_parser("events", help="recent events, or follow the live stream")
    ev.add_argument("--follow", "-f", action="store_true")
    for name, text in (("reset", "close a model's breaker and clear its provider's trouble"),
                       ("probe", "probe a model now")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("model")
    op = sub.add_parser("open", help="force a model's breaker open")
    op.add_argument("model")
    op.add_argument("--for", dest="seconds", type=float, default=None,
                    help="seconds (default: until reset)")
    nx = sub.add_parser("next", help="move a chain's head to its next model")
    nx.add_argument("chain")
    cr = sub.add_parser("chain-reset", help="move a chain's head back to its first model")
    cr.add_argument("chain")
    se = sub.add_parser("select", help="which models would serve a request (no upstream call)")
    se.add_argument("--model", default="default")
    se.add_argument("--needs", default="", help="comma list: tools,vision,reasoning,json")
    se.add_argument("--tokens", type=int, default=0, help="estimated prompt tokens")
    se.add_argument("--prompt", default="", help="a prompt to classify (model auto)")
    sub.add_parser("reload", help="re-read the config file")
    return p


def run(args: argparse.Namespace) -> tuple[Any, str | None]:
    s = args.socket
    cmd = args.command
    if cmd == "status":
        data = call(s, "GET", "/v1/status")
        return data, show_status(data)
    if cmd == "models":
        data = call(s, "GET", "/v1/models")
        return data, show_models(data)
    if cmd == "health":
        try:
            data = call(s, "GET", "/v1/health")
        except Refused as exc:
            if exc.status == 503 and isinstance(exc.body, dict):
                raise Refused(503, exc.body) from None
            raise
        return data, str(data.get("status"))
    if cmd in ("reset", "probe"):
        data = call(s, "POST", f"/v1/models/{model_path(args.model)}/{cmd}")
        return data, f"{args.model}: {data.get('state', 'ok')}"
    if cmd == "open":
        body = {"seconds": args.seconds} if args.seconds is not None else {}
        data = call(s, "POST", f"/v1/models/{model_path(args.model)}/open", body)
        return data, f"{args.model}: {data.get('state', 'open')}"
    if cmd in ("next", "chain-reset"):
        verb = "next" if cmd == "next" else "reset"
        data = call(s, "POST", f"/v1/chains/{quote(args.chain, safe='')}/{verb}")
        return data, f"{args.chain}: head is now {data.get('head')}"
    if cmd == "select":
        needs = [n for n in args.needs.split(",") if n]
        body: dict[str, Any] = {"model": args.model, "needs": needs, "tokens": args.tokens}
        if args.prompt:
            body["messages"] = [{"role": "user", "content": args.prompt}]
        data = call(s, "POST", "/v1/select", body)
        return data, show_select(data)
    if cmd == "reload":
        data = call(s, "POST", "/v1/reload")
        return data, "reloaded" if data.get("ok", True) else "rejected"
    raise AssertionError(cmd)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "events":
            return follow_events(args.socket, args.json, args.follow)
        data, text = run(args)
    except Unreachable as exc:
        print(f"failoverctl: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        if args.json:
            print(orjson.dumps(exc.body).decode())
        else:
            message = exc.body
            if isinstance(exc.body, dict):
                err = exc.body.get("error", exc.body)
                message = err.get("message", err) if isinstance(err, dict) else err
            print(f"failoverctl: daemon said {exc.status}: {message}", file=sys.stderr)
        return 1
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
