"""The floor under bench/xds_zone.py: what grpc.aio itself costs per pushed message.

The simplest ADS-shaped server there is: one bidirectional stream per client over TLS, a
writer per stream sending one pre-serialized 2 KB payload when told, a reader counting the
replies; no generation, no snapshots, no bookkeeping. The clients (two processes, on the same
cores, as in bench/xds_zone.py) answer each message with a short reply, as Envoy ACKs. A round
pushes one message to every stream and waits until every reply was read; measured per round:
the server process's CPU per (message + reply) and the round's wall time.

    python bench/grpc_floor.py --streams 1000
    python bench/grpc_floor.py --quick

``AdsFloor`` is the floor bench/xds_zone.py runs in the same invocation as the control plane: the
simplest grpc.aio ADS server (State of the World and delta, TLS) serving ONE pre-serialized
snapshot (one proxy's resources as the control plane sent them) to every simulated proxy, the
same clients and subscriptions as against the control plane. It answers a request that carries
no response nonce (a subscription) with the whole type, ignores ACKs, and on a change serializes
the changed routes once and writes the same bytes to every stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import grpc
from benchlib import ProcessStats
from zonemesh.zone_cp.xds.testing import self_signed_server_cert

RESULTS = Path(__file__).resolve().parent / "results" / "grpc_floor.json"
SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD = f"/{SERVICE}/StreamAggregatedResources"
PAYLOAD_BYTES = 2000
CLIENT_PROCESSES = 2


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads: the event loop and gRPC's own
    return usage.ru_utime + usage.ru_stime


def _raw(data: bytes) -> bytes:
    return data


async def _serve(cert: bytes, key: bytes, streams: int, rounds: int, results: Queue[Any]) -> None:
    outboxes: list[asyncio.Queue[bytes | None]] = []
    replies = 0

    async def handler(_requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        nonlocal replies
        outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        outboxes.append(outbox)

        async def read() -> None:
            nonlocal replies
            while await context.read() is not grpc.aio.EOF:
                replies += 1

        reader = asyncio.create_task(read())
        while (item := await outbox.get()) is not None:
            await context.write(item)
        reader.cancel()

    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1 << 20)])
    handlers = {"StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(handler, _raw, _raw)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    results.put(port)
    for _ in range(6000):  # bounded: 60 s for every client's first message
        if replies >= streams:
            break
        await asyncio.sleep(0.01)
    payload = os.urandom(PAYLOAD_BYTES)
    measured = []
    for _ in range(rounds):
        await asyncio.sleep(0.5)  # let the previous round's stragglers settle
        target = replies + len(outboxes)
        cpu, started = _cpu_s(), time.perf_counter()
        for outbox in outboxes:
            outbox.put_nowait(payload)
        for _ in range(30_000):  # bounded: 30 s
            if replies >= target:
                break
            await asyncio.sleep(0.001)
        measured.append((_cpu_s() - cpu, time.perf_counter() - started, replies >= target))
    for outbox in outboxes:
        outbox.put_nowait(None)
    await server.stop(1)
    results.put(measured)


def _server_process(cert: bytes, key: bytes, streams: int, rounds: int, results: Queue[Any]) -> None:
    asyncio.run(_serve(cert, key, streams, rounds, results))


async def _clients(port: int, ca: bytes, count: int, rounds: int) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)

    async def one() -> None:
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port}", credentials, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        try:
            call = channel.stream_stream(METHOD, request_serializer=_raw, response_deserializer=_raw)()
            await call.write(b"hello")
            for _ in range(rounds):
                if await call.read() is grpc.aio.EOF:
                    return
                await call.write(b"ack")
            await call.read()  # until the server ends the stream
        finally:
            await channel.close()

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout=60 + 40 * rounds)


def _client_process(port: int, ca: bytes, count: int, rounds: int) -> None:
    asyncio.run(_clients(port, ca, count, rounds))


def run(streams: int, rounds: int) -> dict[str, Any]:
    cert, key = self_signed_server_cert("127.0.0.1")
    results: Queue[Any] = mp.Queue()
    server = mp.Process(target=_server_process, args=(cert, key, streams, rounds, results))
    server.start()
    port = results.get(timeout=30)
    share = streams // CLIENT_PROCESSES
    clients = [mp.Process(target=_client_process, args=(port, cert, share, rounds)) for _ in range(CLIENT_PROCESSES)]
    for client in clients:
        client.start()
    measured = results.get(timeout=120 + 40 * rounds)
    for proc in (*clients, server):
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    n = share * CLIENT_PROCESSES
    per_message_us = [cpu / n * 1e6 for cpu, _, complete in measured if complete]
    return {
        "streams": n,
        "rounds": len(measured),
        "complete_rounds": len(per_message_us),
        "server_cpu_us_per_message_and_reply": {
            "median": round(statistics.median(per_message_us), 1) if per_message_us else None,
            "all": [round(x, 1) for x in per_message_us],
        },
        "round_wall_s": [round(wall, 3) for _, wall, _ in measured],
    }


# --- the ADS floor bench/xds_zone.py runs next to the control plane ---------------------------------

DELTA_METHOD = "DeltaAggregatedResources"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
Snapshot = dict[str, list[tuple[str, str, bytes]]]  # type_url -> [(name, version, Any value bytes)]


def _sotw_body(type_url: str, version: str, resources: list[tuple[str, str, bytes]]) -> bytes:
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import any_pb2

    response = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=version)
    response.resources.extend(any_pb2.Any(type_url=type_url, value=value) for _, _, value in resources)
    return response.SerializeToString()


def _delta_body(type_url: str, version: str, resources: list[tuple[str, str, bytes]]) -> bytes:
    from envoy.service.discovery.v3 import discovery_pb2

    response = discovery_pb2.DeltaDiscoveryResponse(system_version_info=version, type_url=type_url, nonce=version)
    for name, resource_version, value in resources:
        item = response.resources.add(name=name, version=resource_version)
        item.resource.type_url, item.resource.value = type_url, value
    return response.SerializeToString()


def _retimed_routes(routes: list[tuple[str, str, bytes]], old: int, new: int) -> list[tuple[str, str, bytes]]:
    """The route configurations whose request timeout was ``old`` seconds, with ``new`` instead."""
    from envoy.config.route.v3 import route_pb2

    changed = []
    for name, _, value in routes:
        config = route_pb2.RouteConfiguration.FromString(value)
        hit = False
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                if route.route.HasField("timeout") and route.route.timeout.seconds == old:
                    route.route.timeout.seconds, hit = new, True
        if hit:
            changed.append((name, f"floor-{new}", config.SerializeToString()))
    return changed


async def _serve_ads(conn: Any, cert: bytes, key: bytes, snapshot: Snapshot, options: list[tuple[str, Any]]) -> None:
    from envoy.service.discovery.v3 import discovery_pb2

    sotw = {t: _sotw_body(t, "1", rs) for t, rs in snapshot.items()}
    delta = {t: _delta_body(t, "1", rs) for t, rs in snapshot.items()}
    routes = list(snapshot.get(ROUTE, []))
    streams: list[tuple[bool, asyncio.Queue[bytes | None]]] = []  # (delta?, outbox)

    def handler(is_delta: bool) -> Any:
        parse = (
            discovery_pb2.DeltaDiscoveryRequest.FromString if is_delta else discovery_pb2.DiscoveryRequest.FromString
        )
        bodies = delta if is_delta else sotw

        async def serve(_requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
            streams.append((is_delta, outbox))

            async def read() -> None:
                while (raw := await context.read()) is not grpc.aio.EOF:
                    request = parse(raw)
                    if not request.response_nonce and request.type_url in bodies:  # a subscription, not an ACK
                        outbox.put_nowait(bodies[request.type_url])
                outbox.put_nowait(None)

            reader = asyncio.create_task(read())
            try:
                while (item := await outbox.get()) is not None:
                    await context.write(item)
            finally:
                reader.cancel()
                streams.remove((is_delta, outbox))

        return serve

    server = grpc.aio.server(
        options=[("grpc.max_concurrent_streams", 1 << 20), ("grpc.server.max_pending_requests", 1 << 20), *options]
    )
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(handler(False), _raw, _raw),
        DELTA_METHOD: grpc.stream_stream_rpc_method_handler(handler(True), _raw, _raw),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    loop = asyncio.get_running_loop()
    conn.send(port)
    while True:
        command, arg = await loop.run_in_executor(None, conn.recv)
        if command == "change":  # (old, new) request timeout, seconds
            changed = _retimed_routes(routes, *arg)
            names = {name for name, _, _ in changed}
            routes = [r for r in routes if r[0] not in names] + changed
            sotw_body, delta_body = _sotw_body(ROUTE, str(arg[1]), routes), _delta_body(ROUTE, str(arg[1]), changed)
            for is_delta, outbox in streams:
                outbox.put_nowait(delta_body if is_delta else sotw_body)
            conn.send(len(changed))
        elif command == "streams":
            conn.send(len(streams))
        else:
            await server.stop(1)
            conn.send("stopped")
            return


def _ads_floor_process(conn: Any, cert: bytes, key: bytes, snapshot: Snapshot, options: list[tuple[str, Any]]) -> None:
    asyncio.run(_serve_ads(conn, cert, key, snapshot, options))


class AdsFloor:
    """The floor ADS server in a process of its own (its CPU and memory read from /proc)."""

    def __init__(self, snapshot: Snapshot, cert: bytes, key: bytes, options: Sequence[tuple[str, Any]] = ()) -> None:
        """``options``: gRPC server options added to the floor's own (bench/xds_zone.py: the
        control plane's memory options, so that the floor is measured with and without them)."""
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_ads_floor_process, args=(child, cert, key, snapshot, list(options)), daemon=True
        )
        self.process.start()
        if not self.conn.poll(60):
            self.stop()
            raise TimeoutError("the floor ADS server did not start within 60 s")
        self.port: int = self.conn.recv()
        assert self.process.pid is not None
        self.stats = ProcessStats(self.process.pid)

    def _ask(self, command: str, arg: Any = None, timeout: float = 60) -> Any:
        self.conn.send((command, arg))
        if not self.conn.poll(timeout):
            raise TimeoutError(f"the floor ADS server did not answer {command!r} within {timeout} s")
        return self.conn.recv()

    def change(self, old: int, new: int) -> int:
        """Push routes with request timeout ``new`` instead of ``old`` to every stream; how many changed."""
        changed: int = self._ask("change", (old, new))
        return changed

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(Exception):
                self._ask("stop", timeout=15)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 streams, 2 rounds")
    parser.add_argument("--out", type=Path, help=f"JSON report (default {RESULTS}; --quick: *.quick.json)")
    args = parser.parse_args()
    streams, rounds = (100, 2) if args.quick else (args.streams, args.rounds)
    out = args.out or (RESULTS.with_suffix(".quick.json") if args.quick else RESULTS)
    load_before = os.getloadavg()[0]
    result = run(streams, rounds)
    report = {
        "benchmark": "grpc_floor",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench/grpc_floor.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        },
        "params": {"streams": streams, "rounds": rounds, "payload_bytes": PAYLOAD_BYTES},
        **result,
    }
    median = result["server_cpu_us_per_message_and_reply"]["median"]
    print(f"grpc.aio over TLS, {result['streams']} streams: server CPU per message + reply, median {median} µs")
    print(f"  per round: {result['server_cpu_us_per_message_and_reply']['all']} µs; wall {result['round_wall_s']} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
