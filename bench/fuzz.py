"""`python -m bench fuzz --seconds N`: coverage-guided fuzzing of what reads client and upstream bytes.

Targets (each one process, N seconds):
  openai_parse     gateway/surfaces/openai.parse, then what the pipeline does with the result:
                   the declared tools (gateway/tools/govern.declared_tools), the clamp and the
                   re-serialized upstream body
  anthropic_parse  the same for gateway/surfaces/anthropic.parse
  jsonrpc_parse    gateway/mcp/jsonrpc.parse, then the message's action and resource (mcp/actions.py)
  openai_tap       the OpenAI SSE usage reader (surfaces/openai.Tap, usage_from_body), fed in chunks
  anthropic_tap    the same for surfaces/anthropic.Tap
  sse              gateway/sse.py framing: SSESplitter, data_lines, sse_data

A finding is any exception other than the gateway's own GatewayError subclasses (those are
the refusals the parsers exist to raise). Findings are not crashes: each distinct one (type
and innermost gateway frame) is written once to <out>/<target>.findings.jsonl with the input
that found it, and fuzzing goes on.

Engine: atheris (libFuzzer, `pip install -e .[bench]`). Where atheris is not installed (it
has no wheel for some Pythons), the same targets run under a documented fallback: a seeded
mutation loop (bit flips, byte inserts and deletes, splices of the seed corpus, JSON-ish
tokens), without coverage guidance, so it finds less. The report says which engine ran.
The seed corpus is real traffic: wire.py's answers and streams for every endpoint.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

TARGETS = ("openai_parse", "anthropic_parse", "jsonrpc_parse", "openai_tap", "anthropic_tap", "sse")
MAX_DEPTH = 128  # server.max_json_depth's default
OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/count_tokens")


# -- targets: each takes the fuzzer's bytes; GatewayError is an answer, anything else a finding --

def _call_parse(parse: Callable[..., Any], *args: Any) -> Any:
    # Parsers gained a max_depth argument in issue 9; accept both shapes.
    if len(inspect.signature(parse).parameters) > len(args):
        return parse(*args, MAX_DEPTH)
    return parse(*args)


def _llm_parse(surface: Any, paths: tuple[str, ...], data: bytes) -> None:
    from gateway.tools.govern import declared_tools
    if not data:
        return
    parsed = _call_parse(surface.parse, paths[data[0] % len(paths)], data[1:])
    declared_tools(parsed.body)
    parsed.estimated_input_tokens()
    if data[0] & 0x80 and parsed.max_field:
        parsed.clamp(1)
    parsed.upstream_body()


def openai_parse(data: bytes) -> None:
    from gateway.surfaces import openai
    _llm_parse(openai, OPENAI_PATHS, data)


def anthropic_parse(data: bytes) -> None:
    from gateway.surfaces import anthropic
    _llm_parse(anthropic, ANTHROPIC_PATHS, data)


def jsonrpc_parse(data: bytes) -> None:
    from gateway.mcp import actions, jsonrpc
    msg = _call_parse(jsonrpc.parse, data)
    action = actions.action_for(msg)
    if hasattr(actions, "resource_for"):
        actions.resource_for(action, "orders", msg.params)


def _tap(surface: Any, data: bytes) -> None:
    """Byte 0: the request's shape (stream, usage asked, rewritten); byte 1: the chunk size."""
    from gateway.surfaces.base import Parsed
    if len(data) < 2:
        return
    # Small chunks (1-64 bytes) cut events anywhere; large ones (64 bytes-8 KB) keep runs fast.
    flags, size, stream = data[0], data[1] % 64 + 1 if data[1] < 128 else (data[1] - 127) * 64, data[2:]
    parsed = Parsed(action="llm.fuzz", model="m", stream=bool(flags & 1), body={}, raw=b"{}",
                    wants_usage=bool(flags & 2), rewrite=bool(flags & 4))
    tap = surface.Tap(parsed)
    for i in range(0, len(stream), size):
        tap.feed(stream[i:i + size])
    tap.finish()
    surface.usage_from_body(stream)


def openai_tap(data: bytes) -> None:
    from gateway.surfaces import openai
    _tap(openai, data)


def anthropic_tap(data: bytes) -> None:
    from gateway.surfaces import anthropic
    _tap(anthropic, data)


def sse(data: bytes) -> None:
    from gateway import sse as framing
    if not data:
        return
    split, size = framing.SSESplitter(), data[0] % 32 + 1
    for i in range(1, len(data), size):
        for ev in split.events(data[i:i + size]):
            framing.data_lines(ev)
            framing.sse_data(ev)
    split.rest()


FUNCTIONS: dict[str, Callable[[bytes], None]] = {
    "openai_parse": openai_parse, "anthropic_parse": anthropic_parse, "jsonrpc_parse": jsonrpc_parse,
    "openai_tap": openai_tap, "anthropic_tap": anthropic_tap, "sse": sse,
}


# -- findings -------------------------------------------------------------------------

class Findings:
    """Distinct non-GatewayError exceptions of one target, kept in a JSONL file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.seen: dict[str, dict[str, Any]] = {}
        self.runs = 0

    def run(self, fn: Callable[[bytes], None], data: bytes) -> None:
        from gateway.errors import GatewayError
        self.runs += 1
        try:
            fn(data)
        except GatewayError:
            pass
        except Exception as e:  # noqa: BLE001 - every other exception is what we look for
            self.record(e, data)

    def record(self, e: Exception, data: bytes) -> None:
        frames = traceback.extract_tb(e.__traceback__)
        ours = [f for f in frames if "/gateway/" in f.filename] or frames
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        key = f"{type(e).__name__} at {where}"
        if key in self.seen:
            self.seen[key]["count"] += 1
            return
        self.seen[key] = {"finding": key, "message": str(e)[:300], "count": 1, "input": data[:2000].hex(),
                          "input_repr": repr(data[:300]), "traceback": "".join(traceback.format_tb(e.__traceback__))}
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(self.seen[key]) + "\n")


# -- seeds: real traffic --------------------------------------------------------------

def seeds(target: str) -> list[bytes]:
    from adapters.upstream import wire
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "stream": True, "tools": [{"type": "function", "function": {"name": "read_orders"}}],
            "stream_options": {"include_usage": True}}
    msgs = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "stream": True, "tools": [{"name": "orders.read_orders", "input_schema": {}}]}
    bodies = {"/v1/chat/completions": chat, "/v1/completions": {"model": "gpt-4o-mini", "prompt": "hi", "stream": True},
              "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
              "/v1/responses": {"model": "gpt-4o-mini", "input": "hi", "stream": True, "max_output_tokens": 32,
                                "tools": [{"type": "function", "name": "f"}]},
              "/v1/messages": msgs, "/v1/messages/count_tokens": {**msgs, "stream": False}}
    dumps = lambda v: json.dumps(v).encode()  # noqa: E731
    if target in ("openai_parse", "anthropic_parse"):
        paths = OPENAI_PATHS if target == "openai_parse" else ANTHROPIC_PATHS
        return [bytes([i | flag]) + dumps(bodies[p]) for i, p in enumerate(paths) for flag in (0, 0x80)]
    if target == "jsonrpc_parse":
        return [dumps({"jsonrpc": "2.0", "id": 1, "method": m, "params": p}) for m, p in (
            ("tools/call", {"name": "read_orders", "arguments": {"customer": "acme"}}), ("tools/list", {}),
            ("resources/read", {"uri": "orders://acme"}), ("prompts/get", {"name": "p"}), ("initialize", {}))] + [
            dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            dumps({"jsonrpc": "2.0", "id": 3, "result": {}})]
    streams = []
    for path in (("/v1/messages",) if target == "anthropic_tap" else ("/v1/chat/completions", "/v1/completions",
                                                                      "/v1/responses")):
        body = dict(bodies[path], stream=True)
        raw = b"".join(wire.respond_stream(path, body, now=0))
        streams += [bytes([flags, size]) + raw for flags in (1, 3, 5) for size in (0, 7, 63, 200)]
        streams.append(bytes([1, 5]) + wire.respond(path, dict(body, stream=False), now=0)[1])
    return streams


def mutate(rng: random.Random, corpus: list[bytes]) -> bytes:
    if rng.random() < 0.3 and (structured := mutate_json(rng, rng.choice(corpus))) is not None:
        return structured
    data = bytearray(rng.choice(corpus))
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[pos % len(data)] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and data:
            del data[pos:pos + rng.randint(1, 16)]
        elif op == 3:
            data[pos:pos] = rng.choice([b'"', b"{", b"[", b"]", b"}", b",", b":", b"null", b"true", b"1e999",
                                        b"\n\n", b"data: ", b"\r\n", b"[DONE]", b'"usage":', b"-1", b"\\u0000"])
        elif op == 4:
            other = rng.choice(corpus)
            start = rng.randrange(len(other) + 1)
            data[pos:pos] = other[start:start + rng.randint(1, 200)]
        elif op == 5 and data:
            data[pos % len(data):pos % len(data)] = data[:rng.randint(1, 32)] * rng.randint(1, 40)
    return bytes(data)


_VALUES: list[Any] = [None, True, False, 0, -1, 7, 2**64, 1.5, "", "x", "\x00", [], {}, [5], [None], {"a": 1},
                      [{"name": 5}], [{"function": 5}], [{"function": {"name": None}}]]


def mutate_json(rng: random.Random, data: bytes) -> bytes | None:
    """Structure-aware: one value somewhere in the JSON after the selector byte given another
    type (or nested deep); None when the input is not JSON."""
    head, body = (data[:1], data[1:]) if data[:1] and data[:1] != b"{" else (b"", data)
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    spots: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack and len(spots) < 200:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for k in keys:
            spots.append((node, k))
            stack.append(node[k])
    if not spots:
        return None
    node, key = rng.choice(spots)
    value: Any = rng.choice(_VALUES)
    if rng.random() < 0.1:
        for _ in range(rng.choice((100, 130, 260, 1100))):
            value = [value]
    node[key] = value
    try:
        return head + json.dumps(doc).encode()
    except (ValueError, RecursionError):
        return None


def fallback(target: str, seconds: float | None, runs: int | None, findings: Findings, seed: int = 0,
             fn: Callable[[bytes], None] | None = None) -> None:
    """The engine without atheris: seeds, then seeded random mutations until time or runs run out."""
    fn, corpus, rng = fn or FUNCTIONS[target], seeds(target), random.Random(seed)
    for data in corpus:
        findings.run(fn, data)
    deadline = time.monotonic() + seconds if seconds is not None else None
    while (runs is None or findings.runs < runs) and (deadline is None or time.monotonic() < deadline):
        findings.run(fn, mutate(rng, corpus))


def run_atheris(target: str, seconds: float, out: Path) -> None:
    """In this (child) process: libFuzzer over the instrumented gateway modules; never returns."""
    import atheris
    with atheris.instrument_imports(include=["gateway"]):
        import gateway.mcp.actions, gateway.mcp.jsonrpc, gateway.sse  # noqa: E401,F401
        import gateway.surfaces.anthropic, gateway.surfaces.openai, gateway.tools.govern  # noqa: E401,F401
    findings = Findings(out / f"{target}.findings.jsonl")
    fn = FUNCTIONS[target]
    corpus_dir = out / f"{target}.corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds(target)):
        (corpus_dir / f"seed{i}").write_bytes(data)
    rng = random.Random(0)

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        # Half the time a JSON-aware change (a value of another type), else libFuzzer's own.
        if seed % 2 and (structured := mutate_json(rng, data)) is not None and len(structured) <= max_size:
            return structured
        return atheris.Mutate(data, max_size)

    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", "-print_final_stats=1", "-max_len=65536",
                   f"-artifact_prefix={out}/", str(corpus_dir)], lambda data: findings.run(fn, data),
                  custom_mutator=mutator)
    atheris.Fuzz()


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = args.target or list(TARGETS)
    try:
        import atheris  # noqa: F401
        engine = "atheris"
    except ImportError:
        engine = "fallback (seeded mutation, no coverage guidance: atheris is not installed)"
    if args.engine == "fallback":
        engine = "fallback (seeded mutation, no coverage guidance: asked for)"
    print(f"engine: {engine}; {args.seconds:g}s per target; findings in {out}/", flush=True)
    total = 0
    for target in targets:
        (out / f"{target}.findings.jsonl").unlink(missing_ok=True)
        started = time.monotonic()
        if engine == "atheris":
            proc = subprocess.run([sys.executable, "-m", "bench.fuzz", "--child", target, "--seconds",
                                   str(args.seconds), "--out", str(out)],
                                  capture_output=True, text=True, timeout=args.seconds + 300,
                                  env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            (out / f"{target}.log").write_text(proc.stdout + proc.stderr)
            stats = [ln for ln in proc.stderr.splitlines() if ln.startswith(("stat::number_of_executed_units",
                                                                             "Done "))]
            runs = stats[-1] if stats else f"exit {proc.returncode}, see {target}.log"
            found_path = out / f"{target}.findings.jsonl"
            found = [json.loads(ln) for ln in found_path.read_text().splitlines()] if found_path.exists() else []
        else:
            f = Findings(out / f"{target}.findings.jsonl")
            fallback(target, args.seconds, None, f)
            runs, found = f"{f.runs} runs", list(f.seen.values())
        total += len(found)
        print(f"{target}: {len(found)} finding(s) in {time.monotonic() - started:.0f}s ({runs})", flush=True)
        for item in found:
            print(f"  {item['finding']}: {item['message']}\n    input: {item['input_repr']}", flush=True)
    print(f"total: {total} finding(s)")
    return 1 if total else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz")
    add_arguments(p)
    p.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="fuzzing time per target (default 60)")
    p.add_argument("--target", action="append", choices=TARGETS, help="a target (repeat; default: all)")
    p.add_argument("--engine", choices=("auto", "fallback"), default="auto",
                   help="atheris when installed (auto), or the seeded mutation fallback")
    p.add_argument("--out", default="/tmp/portcullis-fuzz", help="directory for findings, corpora and logs")


if __name__ == "__main__":
    a = parser().parse_args()
    if a.child:
        run_atheris(a.child, a.seconds, Path(a.out))
    sys.exit(main(a))
