"""Webhook benchmark: signed webhooks per second and acknowledgement latency of the bot, with its SQLite
store and with PostgreSQL, against a raw ASGI baseline.

    python benchmarks/webhook.py [--seconds 3] [--rate 1000] [--rounds 3] [--servers baseline sqlite postgres]

The baseline is a raw ASGI app (no Starlette) that reads the body, checks the signature and answers 200
`EVENT_RECEIVED`, under the uvicorn options of `python -m bot serve` (same event loop, HTTP implementation,
no access log). The bot is `python -m bot serve` in a process of its own, as deployed: it parses, records
the events and the replies they call for in its transactional store (committed before it acknowledges), and
sends the replies to a fake Graph API from the store's outbox. It runs twice: with its default SQLite store,
and with PostgreSQL (a server this script starts, a fresh database each round).

Load comes from a separate process over loopback (on uvloop, so that it takes little of the CPU it shares
with the servers), keep-alive connections, with realistic bodies (customers' journeys: each click, then the
delivery and read receipts of the message answering it), each one distinct. Baseline, SQLite and PostgreSQL
are measured in turn, for a few rounds, and the medians reported: on a shared host the machine's speed drifts
by tens of per cent within minutes.

Two measurements per server:
- throughput: 64 connections sending as fast as answers come back (closed loop);
- latency at a fixed rate (default 1,000 webhooks/s, open loop: latency counts from when a request was due,
  so a stalled server cannot hide its queue).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.ports import free_port  # noqa: E402

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

SECRET = "benchmark-app-secret"
TOKEN = "benchmark-page-token"
PAGE = "111899832631525"
SERVERS = ("baseline", "sqlite", "postgres")
LABELS = {"baseline": "raw ASGI baseline", "sqlite": "promobot, SQLite", "postgres": "promobot, PostgreSQL"}


# -- the baseline --------------------------------------------------------------------------------------------

ACKNOWLEDGED = b"EVENT_RECEIVED"
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


async def baseline_app(scope: dict, receive: Callable, send: Callable) -> None:
    """Raw ASGI: read the body, check its signature, answer 200 `EVENT_RECEIVED` (403 for a bad signature).

    Any path and method: the load posts to /webhook only.
    """
    from bot.messenger import verify_signature

    if scope["type"] == "lifespan":  # uvicorn runs the bot with lifespan="on": the baseline takes part too
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    signature = None
    for name, value in scope["headers"]:
        if name == b"x-hub-signature-256":
            signature = value.decode("latin-1")
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    status, text = (
        (200, ACKNOWLEDGED) if verify_signature(SECRET, body, signature) else (403, b"bad signature")
    )
    headers = [(b"content-length", str(len(text)).encode()), *_TEXT]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


def uvicorn_options(log_level: str) -> dict[str, Any]:
    """The options `bot.server.serve` gives uvicorn.run, besides the app, host and port (kept equal by
    tests/test_bench_webhook.py): the loop is uvicorn's default for both."""
    from bot.http import BoundedHttpToolsProtocol
    from bot.startup import SHUTDOWN_REPLY_GRACE_S

    return {
        "log_level": log_level,
        "lifespan": "on",
        "timeout_graceful_shutdown": SHUTDOWN_REPLY_GRACE_S,
        "proxy_headers": False,
        "access_log": False,
        "server_header": False,
        "http": BoundedHttpToolsProtocol,
    }


def serve_baseline(port: int) -> None:
    """The baseline under uvicorn, in a process set up as the bot's server sets up its own."""
    import uvicorn

    from bot.startup import tune_garbage_collector

    tune_garbage_collector()
    uvicorn.run(baseline_app, host="127.0.0.1", port=port, **uvicorn_options("warning"))


# -- the fake Graph API and the load -------------------------------------------------------------------------


SENT = b'{"recipient_id":"1","message_id":"m_%d"}'
PROFILE = b'{"first_name":"Ada","id":"1"}'


async def fake_graph(port: int) -> None:
    """The Send and User Profile APIs, alone or in batch requests, answering at once, as cheaply as can be."""
    counter = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal counter
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                content = await reader.readexactly(length) if length else b""
                counter += 1
                if request_line.startswith(b"POST /v") and b"/me/messages" not in request_line:
                    # A batch request: one answer per call, as the platform gives them.
                    calls = json.loads(parse_qs(content.decode())["batch"][0])
                    answers = []
                    for call in calls:
                        counter += 1
                        answer = SENT % counter if call["method"] == "POST" else PROFILE
                        answers.append({"code": 200, "body": answer.decode()})
                    body = json.dumps(answers).encode()
                elif request_line.startswith(b"POST"):
                    body = SENT % counter
                else:
                    body = PROFILE
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# -- the load ------------------------------------------------------------------------------------------------


# The webhooks of one customer's journey to the coupon, as the platform sends them: each click, then the
# delivery and the read receipt of the message the bot answers it with.
JOURNEY = ("start", "delivery", "read", "yes", "delivery", "read", "reveal", "delivery", "read")
# The mix this benchmark used first: twice the clicks of a real conversation, for the same receipts.
CLICKS = ("start", "yes", "delivery", "read")
MIXES = {"journeys": JOURNEY, "clicks": CLICKS}


def bodies(count: int, mix: str = "journeys", start: int = 0) -> list[tuple[bytes, bytes]]:
    """Distinct signed webhook bodies: clicks and receipts of many customers (those numbered from `start`,
    a multiple of 36: where journeys begin)."""
    from bot.messenger import sign

    kinds = MIXES[mix]
    now = int(time.time() * 1000)
    out = []
    for i in range(start, start + count):
        customer = str(10**15 + i // len(kinds))
        base = {"sender": {"id": customer}, "recipient": {"id": PAGE}, "timestamp": now + i}
        match kinds[i % len(kinds)]:
            case "start":
                item = {
                    **base,
                    "postback": {"title": "Get Started", "payload": "GET_STARTED", "mid": f"m_{i}"},
                }
            case "yes" | "reveal" as step:
                payload = f"spring-sale||{step}"
                item = {**base, "postback": {"title": step, "payload": payload, "mid": f"m_{i}"}}
            case "delivery":
                item = {**base, "delivery": {"mids": [f"m_out{i}"], "watermark": now + i}}
            case _:
                item = {**base, "read": {"watermark": now + i}}
        body = json.dumps(
            {"object": "page", "entry": [{"id": PAGE, "time": now, "messaging": [item]}]}
        ).encode()
        out.append((body, sign(SECRET, body).encode()))
    return out


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, body: bytes, signature: bytes) -> int:
        self.writer.write(
            b"POST /webhook HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"X-Hub-Signature-256: %s\r\nContent-Length: %d\r\n\r\n%s" % (signature, len(body), body)
        )
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await self.reader.readexactly(length)
        return status


async def connect(port: int, count: int) -> list[Connection]:
    return [Connection(*await asyncio.open_connection("127.0.0.1", port)) for _ in range(count)]


async def throughput(port: int, work: list[tuple[bytes, bytes]], seconds: float) -> dict:
    connections = await connect(port, 64)
    done = 0
    errors = 0
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    started = time.perf_counter()
    feed = iter(work)

    async def worker(connection: Connection) -> None:
        nonlocal done, errors
        for body, signature in feed:
            if time.perf_counter() > stop:
                return
            sent = time.perf_counter()
            status = await connection.post(body, signature)
            latencies.append(time.perf_counter() - sent)
            done += 1
            errors += status != 200

    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - started
    return {"requests_per_s": done / elapsed, "requests": done, "errors": errors, **percentiles(latencies)}


async def at_rate(port: int, work: list[tuple[bytes, bytes]], rate: float, seconds: float) -> dict:
    connections = await connect(port, 64)
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for connection in connections:
        idle.put_nowait(connection)
    latencies: list[float] = []
    errors = 0

    async def one(due: float, body: bytes, signature: bytes) -> None:
        nonlocal errors
        connection = await idle.get()
        status = await connection.post(body, signature)
        latencies.append(time.perf_counter() - due)  # from when it was due: open loop
        errors += status != 200
        idle.put_nowait(connection)

    tasks = []
    start = time.perf_counter()
    total = int(rate * seconds)
    for index in range(total):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        body, signature = work[index % len(work)]
        tasks.append(asyncio.create_task(one(due, body, signature)))
    await asyncio.gather(*tasks)
    return {"rate": rate, "errors": errors, **percentiles(latencies)}


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


# Where each phase's customers begin: a body seen before is a redelivery, which the bot answers without work.
FIRST_CUSTOMER = {"throughput": 0, "rate": 36_000_000, "warmup": 72_000_000}
MAX_RATE = 40_000  # webhooks/s a throughput phase has bodies for


def load_main(port: int, phase: str, seconds: float, rate: float, mix: str, warmup: float) -> None:
    # Signed before the clock starts.
    count = int((MAX_RATE if phase == "throughput" else rate) * seconds)
    work = bodies(count, mix, FIRST_CUSTOMER[phase])
    warm = bodies(int(rate * warmup), mix, FIRST_CUSTOMER["warmup"]) if phase == "rate" and warmup else []
    # The load shares the machine with the server: uvloop keeps its share of the CPU small.
    run = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run

    async def load() -> dict:
        if phase == "throughput":
            return await throughput(port, work, seconds)
        if warm:  # a server that has just started (first connections, transactions, imports) is not timed
            await at_rate(port, warm, rate, warmup)
        return await at_rate(port, work, rate, seconds)

    before = resource.getrusage(resource.RUSAGE_SELF)
    result = run(load())
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(json.dumps(result))


# -- the servers under test ----------------------------------------------------------------------------------


@dataclass
class Server:
    """A server the load runs against: its port, its process, and for the bot the store's URL."""

    name: str
    port: int
    process: subprocess.Popen
    store: str | None = None
    postgres_pid: int | None = None


def wait_ready(port: int, process: subprocess.Popen, log: Path | None = None, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace") if log and log.exists() else ""
            raise SystemExit(f"server on port {port} exited with {process.returncode}\n{output}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


@contextlib.contextmanager
def running(name: str, workdir: Path, graph_port: int, postgres: PostgresServer | None) -> Iterator[Server]:
    """Start the baseline or the bot (`python -m bot serve`, as deployed) and stop it with SIGTERM."""
    workdir.mkdir(parents=True)
    port = free_port()
    log = workdir / f"{name}.log"
    store = postgres_pid = None
    if name == "baseline":
        command, env = [sys.executable, __file__, "baseline", "--port", str(port)], dict(os.environ)
    else:
        data = workdir / "data"
        data.mkdir(parents=True)
        for file in ("campaign.toml", "thanks.png"):
            shutil.copy(REPO / "data" / file, data / file)
        # Nothing of the caller's shell steers the bot (its store, its flush interval): only what is set here.
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("PROMOBOT_") and key != "DATABASE_URL"
        }
        env = {
            **inherited,
            "PROMOBOT_APP_SECRET": SECRET,
            "PROMOBOT_VERIFY_TOKEN": "v",
            "PROMOBOT_PAGE_TOKEN": TOKEN,
            "PROMOBOT_GRAPH_URL": f"http://127.0.0.1:{graph_port}",
            "PROMOBOT_DATA": str(data),
            "PROMOBOT_CAMPAIGN": str(data / "campaign.toml"),
            "PROMOBOT_PUBLIC_URL": "https://promobot.invalid",
            "PROMOBOT_LOG_LEVEL": "WARNING",
        }
        if name == "sqlite":
            from bot.config import SQLITE_FILE

            store = f"sqlite:///{data / SQLITE_FILE}"  # the default: PROMOBOT_DATABASE_URL unset
        elif postgres is not None:
            store = env["PROMOBOT_DATABASE_URL"] = postgres.create_database(workdir.name.replace("-", "_"))
            postgres_pid = postgres.pid
        else:
            raise ValueError("the PostgreSQL bot needs a PostgreSQL server")
        command = [sys.executable, "-m", "bot", "serve", "--port", str(port)]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, process, log)
        yield Server(name, port, process, store, postgres_pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def replies_owed(store: str) -> int:
    """Replies still in the bot's outbox (sent or given up ones leave it)."""
    if store.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(store) as connection:
            return connection.execute("SELECT count(*) FROM outbox").fetchone()[0]
    path = store.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute("SELECT count(*) FROM outbox").fetchone()[0]


def wait_idle(server: Server, timeout_s: float = 120) -> None:
    """Wait until the bot has sent every reply, so one phase's replies do not weigh on the next."""
    if server.store is None:
        return
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = httpx.get(f"http://127.0.0.1:{server.port}/healthz").json()
        if health["replies_owed"] == 0 and replies_owed(server.store) == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"{LABELS[server.name]} still owed replies after {timeout_s:.0f} s")


# -- measuring -----------------------------------------------------------------------------------------------


def run_load(port: int, phase: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "load", "--port", str(port), "--phase", phase]
    command += ["--seconds", str(args.seconds), "--rate", str(args.rate), "--mix", args.mix]
    command += ["--warmup", str(args.warmup)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a process (or one of its threads) so far, from Linux's /proc."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_part(server: Server, graph_pid: int) -> dict[str, float]:
    """CPU seconds so far of the server's event loop (its main thread), its other threads (the store's
    commits, the flusher), its child processes (the bot's sender process), PostgreSQL (postmaster and
    backends) and the fake Graph API."""
    import psutil

    pid = server.process.pid
    loop = cpu_seconds(pid, pid)
    parts = {"event loop": loop, "other threads": cpu_seconds(pid) - loop}
    if server.store is not None:
        children = [child.pid for child in psutil.Process(pid).children(recursive=True)]
        parts["sender"] = sum(map(cpu_seconds, children))  # 0 for one gone since
    if server.postgres_pid is not None:
        postmaster = psutil.Process(server.postgres_pid)
        backends = [child.pid for child in postmaster.children(recursive=True)]
        parts["PostgreSQL"] = sum(map(cpu_seconds, [postmaster.pid, *backends]))  # 0 for one gone since
    parts["fake Graph API"] = cpu_seconds(graph_pid)
    return parts


def measure(server: Server, args: argparse.Namespace, graph_pid: int) -> dict:
    """Both phases; for the throughput phase, the CPU each part spent per webhook (its replies included)."""
    at_rate = run_load(server.port, "rate", args)
    wait_idle(server)
    before = cpu_by_part(server, graph_pid)
    figures = run_load(server.port, "throughput", args)
    wait_idle(server)  # the replies to this phase's clicks count too
    after = cpu_by_part(server, graph_pid)
    requests = max(figures["requests"], 1)
    cpu = {part: (after[part] - before[part]) / requests * 1000 for part in after}
    cpu["load generator"] = figures.pop("cpu_s") / requests * 1000
    return {**figures, "at_rate": at_rate, "cpu_ms": cpu}


# -- report --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """A goal of issue 15, met or not by the medians."""

    text: str
    server: str
    figure: Callable[[dict], float]  # of the medians
    unit: str
    met: Callable[[float], bool]
    at_rate: bool = False  # only measured at 1,000 webhooks/s


GOALS = (
    Goal(
        "p99 ≤ 10 ms at 1,000 webhooks/s, SQLite",
        "sqlite",
        lambda m: m["sqlite"]["at_rate_p99_ms"],
        "ms",
        lambda v: v <= 10,
        at_rate=True,
    ),
    Goal(
        "p99 ≤ 10 ms at 1,000 webhooks/s, PostgreSQL",
        "postgres",
        lambda m: m["postgres"]["at_rate_p99_ms"],
        "ms",
        lambda v: v <= 10,
        at_rate=True,
    ),
    Goal(
        "SQLite throughput ≥ 0.35× the raw baseline's",
        "sqlite",
        lambda m: m["sqlite"]["ratio"],
        "×",
        lambda v: v >= 0.35,
    ),
    Goal(
        "PostgreSQL ≥ 2,000 webhooks/s",
        "postgres",
        lambda m: m["postgres"]["requests_per_s"],
        "/s",
        lambda v: v >= 2000,
    ),
)


def medians(rounds: list[dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Per server, the median over rounds of each figure; `ratio` is the median of each round's ratio of
    the server's throughput to the baseline's of the same round."""
    out: dict[str, dict[str, float]] = {}
    for name in rounds[0]:

        def median(pick: Callable[[dict], float], name: str = name) -> float:
            return statistics.median(pick(figures[name]) for figures in rounds)

        out[name] = {
            "requests_per_s": median(lambda f: f["requests_per_s"]),
            "p50_ms": median(lambda f: f["p50_ms"]),
            "p99_ms": median(lambda f: f["p99_ms"]),
            "at_rate_p50_ms": median(lambda f: f["at_rate"]["p50_ms"]),
            "at_rate_p99_ms": median(lambda f: f["at_rate"]["p99_ms"]),
            "errors": sum(f[name]["errors"] + f[name]["at_rate"]["errors"] for f in rounds),
            **{
                f"cpu_ms {part}": median(lambda f, p=part: f["cpu_ms"][p])
                for part in rounds[0][name]["cpu_ms"]
            },
        }
        if "baseline" in rounds[0]:
            out[name]["ratio"] = statistics.median(
                figures[name]["requests_per_s"] / figures["baseline"]["requests_per_s"] for figures in rounds
            )
    return out


def report(args: argparse.Namespace, rounds: list[dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Print the medians over the rounds, the CPU per webhook and the goals; return the medians."""
    figures = medians(rounds)
    rate = f"{args.rate:,.0f}/s"
    print(f"\nmedians of {len(rounds)} rounds of {args.seconds:g} s per phase")
    print(
        f"{'':<22}{'webhooks/s':>11}{'× baseline':>11}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'at ' + rate + ': p50 ms':>22}{'p99 ms':>8}"
    )
    for name, median in figures.items():
        ratio = f"{median['ratio']:.2f}" if "ratio" in median else ""
        errors = f"  errors: {median['errors']}" if median["errors"] else ""
        print(
            f"{LABELS[name]:<22}{median['requests_per_s']:>11,.0f}{ratio:>11}{median['p50_ms']:>8.1f}"
            f"{median['p99_ms']:>8.1f}{median['at_rate_p50_ms']:>22.1f}{median['at_rate_p99_ms']:>8.1f}{errors}"
        )
    print("CPU per webhook in the throughput phase (replies included), ms:")
    for name, median in figures.items():
        parts = [
            (key.removeprefix("cpu_ms "), value) for key, value in median.items() if key.startswith("cpu_ms")
        ]
        print(f"  {LABELS[name]:<22}" + ", ".join(f"{part} {ms:.3f}" for part, ms in parts if ms > 0))
    print("goals:")
    for goal in GOALS:
        if goal.server not in figures or (goal.unit == "×" and "baseline" not in figures):
            continue
        if goal.at_rate and args.rate != 1000:
            print(f"  {goal.text}: not measured (--rate {args.rate:g})")
            continue
        value = goal.figure(figures)
        shown = (
            f"{value:,.0f}/s"
            if goal.unit == "/s"
            else f"{value:.2f}×"
            if goal.unit == "×"
            else f"{value:.1f} ms"
        )
        print(f"  {goal.text}: {shown}, {'met' if goal.met(value) else 'NOT MET'}")
    return figures


# -- orchestration -------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    from tests.support.postgres import PostgresServer

    workdir = Path(tempfile.mkdtemp(prefix="promobot-webhook-bench-"))
    graph_port = free_port()
    graph = subprocess.Popen([sys.executable, __file__, "graph", "--port", str(graph_port)])
    postgres = PostgresServer() if "postgres" in args.servers else None
    print(f"load average at start: {', '.join(f'{load:.2f}' for load in os.getloadavg())}")
    try:
        if postgres is not None:
            postgres.start()
        wait_ready(graph_port, graph)
        rounds = []
        for number in range(args.rounds):
            # The servers one after the other, round after round: a machine whose speed drifts (a shared
            # host) weighs on all of them alike.
            figures = {}
            for name in args.servers:
                with running(name, workdir / f"round-{number}-{name}", graph_port, postgres) as server:
                    figures[name] = measure(server, args, graph.pid)
            rounds.append(figures)
            summary = (
                f"{name} {f['requests_per_s']:,.0f}/s, p99 at rate {f['at_rate']['p99_ms']:.1f} ms"
                for name, f in figures.items()
            )
            print(f"round {number + 1}: " + "; ".join(summary))
        medians = report(args, rounds)
        print(f"load average at end: {', '.join(f'{load:.2f}' for load in os.getloadavg())}")
        if args.json:
            Path(args.json).write_text(json.dumps({"rounds": rounds, "medians": medians}, indent=1))
    finally:
        graph.kill()
        graph.wait()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", default="run", choices=["run", "baseline", "graph", "load"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--seconds", type=float, default=3.0, help="of each phase (default 3)")
    parser.add_argument("--rate", type=float, default=1000.0, help="webhooks/s of the latency phase")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds at the fixed rate, not timed, after a start"
    )
    parser.add_argument("--phase", choices=["rate", "throughput"], default="rate")
    parser.add_argument("--rounds", type=int, default=3, help="every server this many times (default 3)")
    parser.add_argument(
        "--servers", nargs="+", choices=SERVERS, default=list(SERVERS), help="which to measure (default all)"
    )
    parser.add_argument(
        "--mix",
        choices=sorted(MIXES),
        default="journeys",
        help="journeys (default): customers' journeys, each click followed by the receipts of its answer; "
        "clicks: half clicks, half receipts",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write every round's figures and the medians here"
    )
    args = parser.parse_args()

    if args.role == "baseline":
        serve_baseline(args.port)
    elif args.role == "graph":
        asyncio.run(fake_graph(args.port))
    elif args.role == "load":
        load_main(args.port, args.phase, args.seconds, args.rate, args.mix, args.warmup)
    else:
        args.servers = [name for name in SERVERS if name in args.servers]  # always in this order
        run(args)


if __name__ == "__main__":
    main()
