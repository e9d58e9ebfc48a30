"""Webhook benchmark: signed webhook requests per second and acknowledgement latency of the bot.

    python benchmarks/webhook.py [--seconds 5] [--rate 1000] [--rounds 5]

The baseline, run in the same session on the same machine, is a bare Starlette endpoint under the same
uvicorn that only checks the signature and answers 200. The bot does everything it does in production:
parses, records the events durably (fsync), acknowledges, and sends the replies to a fake Graph API.
Load comes from a separate process over loopback (on uvloop, so that it takes little of the CPU it shares
with the server), keep-alive connections, with realistic bodies (half of them clicks that call for replies,
half delivery and read receipts), each one distinct. Bare endpoint and bot are measured in turn, for a few
rounds, and the medians reported: on a shared host the machine's speed drifts by tens of per cent within
minutes.

Two measurements per server:
- throughput: 64 connections sending as fast as answers come back;
- latency at a fixed rate (default 1,000 requests/s, open loop: latency counts from when a request was due,
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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.ports import free_port  # noqa: E402

SECRET = "benchmark-app-secret"
TOKEN = "benchmark-page-token"
PAGE = "111899832631525"


# -- the servers ---------------------------------------------------------------------------------------------


def bare_app():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from bot.messenger import verify_signature

    async def webhook(request):
        body = await request.body()
        if not verify_signature(SECRET, body, request.headers.get("x-hub-signature-256")):
            return PlainTextResponse("bad signature", status_code=403)
        return PlainTextResponse("EVENT_RECEIVED")

    return Starlette(routes=[Route("/webhook", webhook, methods=["POST"])])


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


def bodies(count: int, mix: str = "journeys") -> list[tuple[bytes, bytes]]:
    """Distinct signed webhook bodies: clicks and receipts of many customers."""
    from bot.messenger import sign

    kinds = MIXES[mix]
    now = int(time.time() * 1000)
    out = []
    for i in range(count):
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


def load_main(port: int, phase: str, seconds: float, rate: float, mix: str) -> None:
    # Distinct bodies per phase (a body seen before is a redelivery, which the bot answers without work),
    # signed before the clock starts, enough for 20,000 requests/s.
    count = int(20_000 * seconds)
    work = bodies(2 * count, mix)
    work = work[:count] if phase == "rate" else work[count:]
    # The load shares the machine with the server: uvloop keeps its share of the CPU small.
    run = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = run(at_rate(port, work, rate, seconds) if phase == "rate" else throughput(port, work, seconds))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(json.dumps(result))


# -- orchestration -------------------------------------------------------------------------------------------


def wait_ready(port: int, process: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


def run_load(port: int, phase: str, seconds: float, rate: float, mix: str) -> dict:
    output = subprocess.run(
        [
            sys.executable,
            __file__,
            "load",
            "--port",
            str(port),
            "--phase",
            phase,
            "--seconds",
            str(seconds),
            "--rate",
            str(rate),
            "--mix",
            mix,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def wait_idle(port: int | None, timeout_s: float = 120) -> None:
    """Wait until the bot has sent every reply, so one phase's replies do not weigh on the next."""
    if port is None:
        return
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"http://127.0.0.1:{port}/healthz").json()["replies_in_flight"] == 0:
            return
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """A process's children (the bot's reply worker)."""
    pids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        pids += [int(child) for child in task.read_text().split()]
    return pids


def measure(port: int, args: argparse.Namespace, *, server: int, graph: int, bot: bool) -> dict:
    """Both phases; for the throughput phase, the CPU each process spent per request (replies included)."""
    health_port = port if bot else None
    at_rate_figures = run_load(port, "rate", args.seconds, args.rate, args.mix)
    wait_idle(health_port)
    processes = {"server": [server], "reply worker": children(server), "fake Graph API": [graph]}
    before = {name: sum(map(cpu_seconds, pids)) for name, pids in processes.items()}
    figures = run_load(port, "throughput", args.seconds, args.rate, args.mix)
    wait_idle(health_port)  # the replies to this phase's clicks count too
    requests = figures["requests"]
    cpu = {name: (sum(map(cpu_seconds, pids)) - before[name]) / requests for name, pids in processes.items()}
    cpu["load generator"] = figures.pop("cpu_s") / requests
    return {**figures, "at_rate": at_rate_figures, "cpu_ms": {k: v * 1000 for k, v in cpu.items() if v > 0}}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", default="run", choices=["run", "bare", "graph", "load"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--phase", choices=["rate", "throughput"], default="rate")
    parser.add_argument("--rounds", type=int, default=5, help="bare endpoint and bot, this many times each")
    parser.add_argument(
        "--mix",
        choices=sorted(MIXES),
        default="journeys",
        help="journeys (default): customers' journeys, each click followed by the receipts of its answer; "
        "clicks: half clicks, half receipts",
    )
    args = parser.parse_args()

    if args.role == "bare":
        import uvicorn

        uvicorn.run(bare_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
        return
    if args.role == "graph":
        asyncio.run(fake_graph(args.port))
        return
    if args.role == "load":
        load_main(args.port, args.phase, args.seconds, args.rate, args.mix)
        return

    workdir = Path(tempfile.mkdtemp(prefix="promobot-webhook-bench-"))
    graph_port = free_port()
    graph = subprocess.Popen([sys.executable, __file__, "graph", "--port", str(graph_port)])
    try:
        wait_ready(graph_port, graph)
        rounds = []
        for number in range(args.rounds):
            # Bare endpoint and bot one after the other, round after round: a machine whose speed drifts
            # (a shared host) weighs on both alike.
            baseline = run_bare(args, graph.pid)
            measured = run_bot(args, graph_port, graph.pid, workdir / f"round-{number}")
            rounds.append((baseline, measured))
            if args.rounds > 1:
                print(
                    f"round {number + 1}: bare {baseline['requests_per_s']:,.0f}/s, promobot "
                    f"{measured['requests_per_s']:,.0f}/s, "
                    f"{measured['requests_per_s'] / baseline['requests_per_s']:.2f}x; at {args.rate:,.0f}/s "
                    f"p99 {baseline['at_rate']['p99_ms']:.1f} / {measured['at_rate']['p99_ms']:.1f} ms"
                )
        report(args, rounds)
    finally:
        graph.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def run_bare(args: argparse.Namespace, graph_pid: int) -> dict:
    port = free_port()
    bare = subprocess.Popen([sys.executable, __file__, "bare", "--port", str(port)])
    try:
        wait_ready(port, bare)
        return measure(port, args, server=bare.pid, graph=graph_pid, bot=False)
    finally:
        bare.send_signal(signal.SIGTERM)
        bare.wait(timeout=60)


def run_bot(args: argparse.Namespace, graph_port: int, graph_pid: int, workdir: Path) -> dict:
    data = workdir / "data"
    data.mkdir(parents=True)
    for name in ("campaign.toml", "thanks.png"):
        shutil.copy(REPO / "data" / name, data / name)
    env = {
        **os.environ,
        "PROMOBOT_APP_SECRET": SECRET,
        "PROMOBOT_VERIFY_TOKEN": "v",
        "PROMOBOT_PAGE_TOKEN": TOKEN,
        "PROMOBOT_GRAPH_URL": f"http://127.0.0.1:{graph_port}",
        "PROMOBOT_DATA": str(data),
        "PROMOBOT_CAMPAIGN": str(data / "campaign.toml"),
        "PROMOBOT_LOG_LEVEL": "WARNING",
    }
    port = free_port()
    bot = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--port", str(port)], cwd=REPO, env=env)
    try:
        wait_ready(port, bot)
        return measure(port, args, server=bot.pid, graph=graph_pid, bot=True)
    finally:
        bot.send_signal(signal.SIGTERM)
        bot.wait(timeout=60)


def report(args: argparse.Namespace, rounds: list[tuple[dict, dict]]) -> None:
    """Medians over the rounds (the round whose promobot/bare ratio is the median, for the CPU figures)."""
    middle = sorted(rounds, key=lambda r: r[1]["requests_per_s"] / r[0]["requests_per_s"])[len(rounds) // 2]

    def median(side: int, *keys: str) -> float:
        values = []
        for pair in rounds:
            value = pair[side]
            for key in keys:
                value = value[key]
            values.append(value)
        return statistics.median(values)

    print(f"{'':<34}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}   at {args.rate:,.0f}/s: p50 ms, p99 ms")
    for side, label in ((0, "bare endpoint (signature only)"), (1, "promobot webhook")):
        errors = sum(pair[side]["errors"] + pair[side]["at_rate"]["errors"] for pair in rounds)
        print(
            f"{label:<34}{median(side, 'requests_per_s'):>12,.0f}{median(side, 'p50_ms'):>9.1f}"
            f"{median(side, 'p99_ms'):>9.1f}   {median(side, 'at_rate', 'p50_ms'):>15.1f}, "
            f"{median(side, 'at_rate', 'p99_ms'):.1f}" + (f"  errors: {errors}" if errors else "")
        )
    print("CPU per request in the throughput phase, ms:")
    for label, figures in (("bare endpoint", middle[0]), ("promobot", middle[1])):
        print(f"  {label:<15}" + ", ".join(f"{name} {ms:.3f}" for name, ms in figures["cpu_ms"].items()))
    ratios = sorted(bot["requests_per_s"] / bare["requests_per_s"] for bare, bot in rounds)
    spread = f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
    print(f"promobot / bare endpoint throughput: {statistics.median(ratios):.2f}x{spread}")


if __name__ == "__main__":
    main()
