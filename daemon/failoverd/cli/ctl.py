"""`failoverctl`: the daemon's command-line client over its Unix socket.

Human tables by default, ``--json`` (before or after the command) for scripts. Exit codes: 0 ok,
1 the daemon said no (an HTTP error, or ``health`` answering "down"), 2 the daemon is
unreachable or the command line is wrong, 130 interrupted (Ctrl-C; ``events --follow`` ends
with 0). Only the standard library (and orjson) is used, so it starts fast.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import orjson

from failoverd.events import text_value

SYSTEM_SOCKET = "/run/failoverd/failoverd.sock"
# an empty FAILOVERD_SOCKET (`Environment=FAILOVERD_SOCKET=`, an exported but unset shell
# variable) means the default, as an empty --socket does
DEFAULT_SOCKET = os.environ.get("FAILOVERD_SOCKET") or SYSTEM_SOCKET
# How long an answer may take before the daemon counts as hung (exit 2). A probe's answer
# comes once the daemon's probe ends, bounded by its probes.timeout, which may well exceed
# 30 s (a local model loading, a slow reasoning model): waiting only 30 s called a daemon
# still probing "unreachable".
ANSWER_TIMEOUT = 30.0
PROBE_TIMEOUT = 600.0


class UnixConnection(http.client.HTTPConnection):
    """http.client over an AF_UNIX socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("failoverd", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class Unreachable(Exception):
    """The daemon's socket could not be reached (exit 2)."""


class Refused(Exception):
    """The daemon answered with an HTTP error (exit 1)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(status)


# What a connection that breaks or speaks no HTTP raises: socket errors, and http.client's
# own (IncompleteRead for an answer cut short, BadStatusLine for a peer that is no HTTP server)
_LOST = (OSError, http.client.HTTPException)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return str(exc)
    return f"{type(exc).__name__} {str(exc).strip()[:80]!r}"


def _request(sock: str, method: str, path: str, body: Any = None, timeout: float = ANSWER_TIMEOUT
             ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = UnixConnection(sock, timeout)
    data = orjson.dumps(body) if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    try:
        conn.request(method, path, body=data, headers=headers)
        return conn, conn.getresponse()
    except _LOST as exc:
        conn.close()
        raise Unreachable(f"cannot reach failoverd at {sock}: {_why(exc)}") from exc


def _parsed(raw: bytes) -> Any:
    """An answer's body: its JSON, else its text."""
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def call(sock: str, method: str, path: str, body: Any = None,
         timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
    """One request; the parsed JSON answer, or Refused / Unreachable."""
    conn, resp = _request(sock, method, path, body, timeout)
    try:
        raw = resp.read()
    except _LOST as exc:
        raise Unreachable(f"failoverd at {sock} dropped the connection: {_why(exc)}") from exc
    finally:
        conn.close()
    parsed = _parsed(raw)
    if resp.status >= 400:
        raise Refused(resp.status, parsed)
    if not isinstance(parsed, dict):
        # every endpoint answers an object: anything else is not failoverd on that socket
        raise Unreachable(f"{sock} did not answer like failoverd (HTTP {resp.status}, "
                          f"{raw[:80]!r})")
    return parsed


def _in(at: Any, now: float) -> str:
    """A wall-clock epoch time as "in 25s" from `now`; "-" when there is none."""
    if not isinstance(at, int | float):
        return "-"
    left = at - now
    if left <= 0:
        return "now"
    if left < 120:
        return f"in {left:.0f}s"
    if left < 7200:
        return f"in {left / 60:.0f}m"
    if left < 172800:
        return f"in {left / 3600:.1f}h"
    return f"in {left / 86400:.1f}d"  # a monthly spending cap's reset


def _ago(at: Any, now: float) -> str:
    """A wall-clock epoch time in the past as "12s ago"; "-" when there is none."""
    if not isinstance(at, int | float):
        return "-"
    ago = max(0.0, now - at)
    return f"{ago:.0f}s ago" if ago < 120 else f"{ago / 60:.0f}m ago"


def _count(value: Any) -> str:
    """A count with thousands separators; "-" when there is none."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def _clock(at: Any) -> str:
    """An epoch time as local date and time."""
    return (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
            if isinstance(at, int | float) else "?")


def _ms(seconds: Any) -> str:
    return "-" if not isinstance(seconds, int | float) else f"{seconds * 1000:.0f}ms"


def _pct(rate: Any) -> str:
    return "-" if not isinstance(rate, int | float) else f"{rate * 100:.0f}%"


def _share(share: Any) -> str:
    """A configured share as the operator wrote it, in percent (0.125: "12.5%")."""
    return "-" if not isinstance(share, int | float) else f"{round(share * 100, 6):g}%"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Left-aligned columns under an upper-case header; None shows as "-"."""
    cells = [[str(c) if c is not None else "-" for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def model_path(model_id: str) -> str:
    """A model id in a URL path: '/' and ':' stay (the routes accept them), the rest quoted."""
    return quote(model_id, safe="/:")


def _probe_cell(probe: Any) -> str:
    if not isinstance(probe, dict):
        return "-"
    if probe.get("ok"):
        return f"ok {_ms(probe.get('latency'))}"
    return f"failed: {probe.get('reason') or '?'}"


def show_status(data: dict[str, Any]) -> str:
    """GET /v1/status as tables: models, providers with trouble, caps, chains, pools."""
    now = data.get("time") or time.time()
    out = [f"failoverd {data.get('version', '')} on {data.get('node', '?')}: "
           f"{data.get('health', '?')}, {data.get('inflight', 0)} in flight, "
           f"{data.get('failovers_last_minute', 0)} failovers in the last minute"]
    rows: list[tuple[Any, ...]] = [
        (mid, m.get("state"), m.get("reason") or m.get("budget"), _in(m.get("retry_at"), now),
         m.get("consecutive_failures"), _pct(m.get("failure_rate")),
         _ms(m.get("latency_p50")), _ms(m.get("latency_p95")),
         _probe_cell(m.get("last_probe")), m.get("inflight"))
        for mid, m in data.get("models", {}).items()]
    last = data.get("last_reload")
    if isinstance(last, dict) and last.get("ok") is False:
        # the file on disk is not what serves: the next restart would fail on it
        problems = last.get("problems") or []
        out.append(f"config {last.get('source') or data.get('config', '?')}: the last reload "
                   f"({_clock(last.get('at'))}) was REJECTED, the previous configuration "
                   f"still serves; {len(problems)} problem(s):")
        out += [f"  {p}" for p in problems]
    header = ["model", "state", "reason", "retry", "fails", "rate", "p50", "p95",
              "last probe", "inflight"]
    models = data.get("models", {})
    costs = [m.get("cost_usd") for m in models.values()]
    if any(costs):  # models with a configured cost have served: what each has cost
        header.append("cost")
        rows = [(*row, None if c is None else _usd(c))
                for row, c in zip(rows, costs, strict=True)]
    out.append(table(rows, header))
    usage = data.get("usage") or {}
    tokens = usage.get("tokens") or {}
    prompt, completion = int(tokens.get("prompt", 0)), int(tokens.get("completion", 0))
    if prompt or completion:
        total = float(usage.get("cost_usd") or 0)
        out.append(f"tokens since start: {prompt:,} prompt, {completion:,} completion"
                   + (f"; cost {_usd(total)}" if total else ""))
    told = [(mid, m["upstream_limits"]) for mid, m in models.items()
            if isinstance(m.get("upstream_limits"), dict)]
    if told:  # what each model's upstream said of its rate limit in its last answer
        out += ["", table([(mid, _count(u.get("requests_remaining")),
                            _in(u.get("requests_reset_at"), now),
                            _count(u.get("tokens_remaining")),
                            _in(u.get("tokens_reset_at"), now), _ago(u.get("at"), now))
                           for mid, u in told],
                          ("upstream limits", "requests left", "reset", "tokens left",
                           "reset", "told"))]
    hedging = [(mid, m["hedge_budget"]) for mid, m in models.items()
               if isinstance(m.get("hedge_budget"), dict)]
    if hedging:  # the hedge budgets' use over their window (the last minute)
        out += ["", table([(mid, _share(h.get("share")), h.get("reserve"), h.get("eligible"),
                            h.get("hedged"), h.get("refused"), h.get("left"))
                           for mid, h in hedging],
                          ("hedge budget", "share", "reserve", "hedgeable", "hedged",
                           "refused", "left"))]
    providers = data.get("providers", {})
    troubled = [(name, p.get("credentials"), _in(p.get("retry_at"), now))
                for name, p in providers.items() if p.get("credentials") != "ok"]
    if troubled:
        out += ["", table(troubled, ("provider", "credentials", "retry"))]
    budgets = data.get("budgets") or []
    if budgets:  # the spending caps: what was spent of each this day or month
        out += ["", table([(f"{b.get('scope')} {b.get('name')}", b.get("period"),
                            _usd(float(b.get("spent_usd") or 0)),
                            _usd(float(b.get("limit_usd") or 0)),
                            "REACHED" if b.get("reached") else "",
                            _in(b.get("resets_at"), now)) for b in budgets],
                          ("budget", "period", "spent", "cap", "", "resets"))]
    clients = data.get("clients") or {}
    if clients:  # [clients.<name>]: who each is, its limits and its use now
        out += ["", table([(n, _who(c), _limit(c.get("requests_last_minute"), c.get("max_rpm")),
                            _limit(c.get("inflight"), c.get("max_concurrency")),
                            _spent(c, "day"), _spent(c, "month"),
                            " ".join(c["models"]) if c.get("models") is not None else "any",
                            (c.get("limited") or "").upper() or None)
                           for n, c in clients.items()],
                          ("client", "who", "rpm", "at once", "today", "this month",
                           "models", "limited"))]
    chains = data.get("chains", {})
    if chains:
        out += ["", table([(n, c.get("head"), " > ".join(c.get("models", [])))
                           for n, c in chains.items()], ("chain", "head", "models"))]
    pools = data.get("pools") or {}
    if pools:  # weights shown only where they differ
        out += ["", table([(n, p.get("strategy"), p.get("next"), " ".join(
            f"{m.get('model')}" + (f"*{m.get('weight'):g}" if _weighted(p) else "")
            + (f"({m.get('inflight')})" if m.get("inflight") else "")
            for m in p.get("models", []))) for n, p in pools.items()],
            ("pool", "strategy", "next", "models (*weight, (calls under way))"))]
    return "\n".join(out)


def _who(client: dict[str, Any]) -> str:
    who = [f"uid {u}" for u in client.get("uids") or []]
    return ", ".join(who + (["token"] if client.get("tcp_token") else []))


def _limit(use: Any, limit: Any) -> str:
    """A client's use of a limit: "3/60", or "3" without one."""
    return f"{use or 0}/{limit}" if limit else f"{use or 0}"


def _spent(client: dict[str, Any], period: str) -> str:
    spent = float((client.get("spent_usd") or {}).get(period) or 0)
    cap = client.get(f"max_cost_per_{period}")
    return f"{_usd(spent)}/{_usd(float(cap))}" if cap else _usd(spent)


def _weighted(pool: dict[str, Any]) -> bool:
    return len({m.get("weight") for m in pool.get("models", [])}) > 1


def _usd(amount: float) -> str:
    """Dollars to the cent, or below one in plain decimals to four significant digits (a
    cheap model's $0.000015, never e-notation in a money column)."""
    if amount >= 1 or amount == 0:
        return f"${amount:,.2f}"
    digits = max(2, 3 - math.floor(math.log10(amount)))  # four significant digits
    whole, _, decimals = f"{amount:.{digits}f}".partition(".")
    return f"${whole}.{decimals.rstrip('0').ljust(2, '0')}"


def show_models(data: dict[str, Any]) -> str:
    """GET /v1/models as a table (chains are listed by ``status``)."""
    rows = [(m["id"], m.get("state"), m.get("tier"), m.get("context_window"),
             ",".join(m.get("capabilities") or []) or "-")
            for m in data.get("data", []) if "chain" not in m]
    return table(rows, ("model", "state", "tier", "context", "capabilities"))


def show_select(data: dict[str, Any]) -> str:
    """POST /v1/select: the candidates in order, the first eligible one marked."""
    req = data.get("requirements") or {}
    head = (f"model {data.get('model', '?')}: needs {','.join(req.get('needs') or []) or '-'}"
            f", {req.get('prompt_tokens', 0)} prompt tokens")
    if data.get("route"):
        head += f", route {data['route']}"
    chosen = next((c.get("model") for c in data.get("candidates", []) if c.get("eligible")),
                  None)
    rows = [("*" if c.get("model") == chosen else "", c.get("model"),
             "yes" if c.get("eligible") else "no", c.get("state"), c.get("reason") or "")
            for c in data.get("candidates", [])]
    lines = [head, table(rows, ("", "model", "eligible", "state", "reason"))]
    if chosen is None:
        lines.append("no candidate is eligible now")
    return "\n".join(lines)


def follow_events(sock: str, as_json: bool, follow: bool) -> int:
    path = "/v1/events" if follow else "/v1/events?recent=1"
    conn, resp = _request(sock, "GET", path, timeout=3600 if follow else ANSWER_TIMEOUT)
    if resp.status >= 400:
        try:
            raw = resp.read()
        except _LOST as exc:
            raise Unreachable(f"failoverd at {sock} dropped the connection: {_why(exc)}") \
                from exc
        finally:
            conn.close()
        # parsed as for any other command: --json prints the daemon's error object, not a
        # JSON string holding it
        raise Refused(resp.status, _parsed(raw))
    shown = 0
    try:
        for event in _sse(resp):
            shown += 1
            if as_json:
                print(orjson.dumps(event).decode(), flush=True)
            else:
                extra = " ".join(f"{k}={text_value(v)}" for k, v in event.items()
                                 if k not in ("id", "type", "time", "node"))
                print(f"{event.get('time', '')} {event.get('type', '')} {extra}", flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        raise  # our reader left (`| head`), not the daemon: main() ends quietly with 0
    except _LOST as exc:
        # the daemon died or was killed mid-stream (a clean shutdown ends the stream)
        raise Unreachable(f"failoverd at {sock} dropped the connection: {_why(exc)}") from exc
    finally:
        conn.close()
    if not shown and not follow and not as_json:
        # on stderr: a script reading stdout still gets no lines
        print("no recent events (--follow waits for new ones)", file=sys.stderr)
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


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (``--for``). JSON has no nan or inf: sent, they
    would arrive as null, which opens the breaker until a reset."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _tokens(text: str) -> int:
    """A token count (``select --tokens``): a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    # --socket and --json work before or after the command: SUPPRESS keeps a subcommand's
    # unset copy from overwriting the value given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help=f"daemon socket (default: $FAILOVERD_SOCKET or {SYSTEM_SOCKET})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    p = argparse.ArgumentParser(prog="failoverctl", description="Control a failoverd daemon.",
                                parents=[common])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    command("status", "models with their breakers, providers, chains")
    command("models", "configured models and their state")
    command("health", "ok / degraded / down (exit 1 when down)")
    ev = command("events", "recent events, or follow the live stream")
    ev.add_argument("--follow", "-f", action="store_true")
    command("reset", "close a model's breaker and clear its provider's trouble").add_argument(
        "model")
    command("probe", "probe a model now; success closes an open breaker").add_argument("model")
    op = command("open", "force a model's breaker open")
    op.add_argument("model")
    op.add_argument("--for", dest="seconds", type=_seconds, default=None, metavar="S",
                    help="seconds (default: until reset)")
    command("next", "move a chain's head to its next model").add_argument("chain")
    command("chain-reset", "move a chain's head back to its first model").add_argument("chain")
    se = command("select", "which models would serve a request (no upstream call)")
    se.add_argument("--model", default="default", help="model, chain, default or auto")
    se.add_argument("--needs", default="", help="comma list: tools,vision,reasoning,json,"
                                                "long_context")
    se.add_argument("--tokens", type=_tokens, default=0, help="estimated prompt tokens")
    se.add_argument("--prompt", default="", help="a prompt to classify (with --model auto)")
    ss = command("session", "a session's pinned model, chain or pool and sticky failover")
    ss.add_argument("key")
    what = ss.add_mutually_exclusive_group()
    what.add_argument("--prefer", metavar="MODEL", help="pin a model, chain or pool to the session")
    what.add_argument("--unpin", action="store_true", help="drop the pinned preference")
    what.add_argument("--forget", action="store_true", help="forget the session")
    command("reload", "re-read the config file")
    return p


def show_session(data: dict[str, Any]) -> str:
    """GET /v1/sessions/{key}: its pin and its sticky failover."""
    lines = [f"session {data.get('key')}: "
             + (f"pinned to {data['preference']}" if data.get("preference") else "no pin")]
    sticky = data.get("sticky")
    if isinstance(sticky, dict):
        lines.append(f"  on {sticky.get('model')} after a failover from "
                     f"{sticky.get('from_model')}, until {_clock(sticky.get('until'))}")
    lines.append(f"  last used {_clock(data.get('last_used'))}, forgotten at "
                 f"{_clock(data.get('expires'))} unless used")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[Any, str, int]:
    """Runs one command: (JSON answer, human text, exit code)."""
    s = args.socket
    cmd = args.command
    if cmd == "status":
        data = call(s, "GET", "/v1/status")
        return data, show_status(data), 0
    if cmd == "models":
        data = call(s, "GET", "/v1/models")
        return data, show_models(data), 0
    if cmd == "health":
        try:
            data = call(s, "GET", "/v1/health")
        except Refused as exc:
            # 503 "down" is an answer, not a refusal: print it, and exit 1 for scripts
            if exc.status == 503 and isinstance(exc.body, dict) and "status" in exc.body:
                return exc.body, str(exc.body["status"]), 1
            raise
        return data, str(data.get("status")), 0
    if cmd == "reset":
        data = call(s, "POST", f"/v1/models/{model_path(args.model)}/reset")
        return data, f"{args.model}: {data.get('state')}", 0
    if cmd == "probe":
        try:
            data = call(s, "POST", f"/v1/models/{model_path(args.model)}/probe",
                        timeout=PROBE_TIMEOUT)
        except Refused as exc:
            # 502: the probe ran and failed; that is the answer asked for
            if exc.status != 502 or not isinstance(exc.body, dict):
                raise
            probe = exc.body.get("last_probe") or {}
            return exc.body, (f"{args.model}: probe failed ({probe.get('reason')}), "
                              f"{exc.body.get('state')}"), 1
        probe = data.get("last_probe") or {}
        return data, (f"{args.model}: probe ok in {_ms(probe.get('latency'))}, "
                      f"{data.get('state')}"), 0
    if cmd == "open":
        body = {"seconds": args.seconds} if args.seconds is not None else None
        data = call(s, "POST", f"/v1/models/{model_path(args.model)}/open", body)
        at = data.get("retry_at")
        until = ("until reset" if not isinstance(at, int | float)
                 else "until " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)))
        return data, f"{args.model}: {data.get('state')} {until}", 0
    if cmd in ("next", "chain-reset"):
        verb = "next" if cmd == "next" else "reset"
        data = call(s, "POST", f"/v1/chains/{quote(args.chain, safe='')}/{verb}")
        return data, f"{args.chain}: head is now {data.get('head')}", 0
    if cmd == "select":
        needs = [n.strip() for n in args.needs.split(",") if n.strip()]
        request: dict[str, Any] = {"model": args.model, "needs": needs, "tokens": args.tokens}
        if args.prompt:
            request["messages"] = [{"role": "user", "content": args.prompt}]
        data = call(s, "POST", "/v1/select", request)
        return data, show_select(data), 0
    if cmd == "session":
        path = f"/v1/sessions/{quote(args.key, safe='/:')}"
        if args.forget:
            data = call(s, "DELETE", path)
            return data, f"session {args.key}: forgotten", 0
        if args.prefer is not None or args.unpin:
            data = call(s, "POST", path, {"model": args.prefer})
        else:
            data = call(s, "GET", path)
        return data, show_session(data), 0
    if cmd == "reload":
        data = call(s, "POST", "/v1/reload")
        return data, f"reloaded {data.get('config', '')}".rstrip(), 0
    raise AssertionError(cmd)


def _refusal(exc: Refused) -> str:
    body = exc.body
    if isinstance(body, dict):
        if isinstance(body.get("problems"), list):  # a rejected reload
            problems = body["problems"]
            where = f"{body['config']} has " if body.get("config") else ""
            return (f"config rejected: {where}{len(problems)} problem(s), the previous "
                    "configuration still serves:\n" + "\n".join(f"  {p}" for p in problems))
        err = body.get("error", body)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
    return str(body)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C while waiting for the daemon (a slow probe, a hung socket): no traceback;
        # 130 is what a shell reports for a command ended by SIGINT
        print("failoverctl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`failoverctl ... | head`): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.socket = getattr(args, "socket", None) or DEFAULT_SOCKET
    args.json = getattr(args, "json", False)
    try:
        if args.command == "events":
            return follow_events(args.socket, args.json, args.follow)
        data, text, code = run(args)
    except Unreachable as exc:
        print(f"failoverctl: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        if args.json:
            print(orjson.dumps(exc.body).decode())
        else:
            print(f"failoverctl: daemon said {exc.status}: {_refusal(exc)}", file=sys.stderr)
        return 1
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() if args.json else text)
    return code


if __name__ == "__main__":
    sys.exit(main())
