"""The HTTP floor: bench.ingest's load against an aiohttp server that only parses and answers.

    python -m bench.http_floor                  # N=20000, concurrency 64, like bench.ingest

The server runs on the same stack as the hub (aiohttp on uvloop, one process, pinned to CPU 0
like the hub in bench.ingest) but does nothing with a submission except parse its JSON and
answer 201 with a small JSON body. Whatever the hub costs above this figure is its own work.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid

from aiohttp import web

from bench.ingest import ROOT, cpu_plan, cpu_seconds, free_port, percentile, run_generator, wait_ready
from hub.process import loop_factory, pin_to_cpus


def serve(port: int, cpus: list[int]) -> None:
    """The floor server: /healthz and POST /forms/{form_id} (parse, answer 201)."""
    pin_to_cpus(cpus)  # as the hub pins itself (process.cpus)
    factory = loop_factory("uvloop")
    assert factory is not None

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def post_form(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"lead": "L-1", "name": body.get("name")}, status=201)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/forms/{form_id}", post_form)
    web.run_app(app, host="127.0.0.1", port=port, loop=factory(), print=None, access_log=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.http_floor", description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--total", type=int, default=20_000, help="requests (default 20000)")
    parser.add_argument("-c", "--concurrency", type=int, default=64, help="in flight (default 64)")
    parser.add_argument("--warmup", type=int, default=500, help="requests before measuring")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--cpus", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, [int(cpu) for cpu in args.cpus.split(",") if cpu])
        return 0
    server_cpus, generator_cpus = cpu_plan(1, True)
    port = free_port()
    cpus = ",".join(map(str, server_cpus[0]))
    command = [sys.executable, "-m", "bench.http_floor", "--serve", str(port), "--cpus", cpus]
    proc = subprocess.Popen(command, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(url, proc))
        run_id = uuid.uuid4().hex[:8]
        if args.warmup:
            run_generator(url, args.warmup, args.concurrency, run_id + "w", generator_cpus)
        before = cpu_seconds(proc.pid)
        started = time.perf_counter()
        result = run_generator(url, args.total, args.concurrency, run_id, generator_cpus)
        server_cpu = cpu_seconds(proc.pid) - before
        elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    latencies = sorted(result["latencies"])
    p50, p99 = (percentile(latencies, f) * 1000 for f in (0.50, 0.99))
    print(f"statuses       {result['statuses']}")
    print(f"throughput     {args.total / result['elapsed']:,.0f} requests/s ({elapsed:.1f} s with start-up)")
    print(f"latency        p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"server CPU     {server_cpu / args.total * 1000:.3f} ms per request")
    print(f"generator CPU  {result['cpu'] / args.total * 1000:.3f} ms per request")
    ok = result["statuses"].get("201", 0) == args.total
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
