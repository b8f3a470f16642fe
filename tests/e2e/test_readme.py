"""README.md, run as written: every bash and python block, in order, against a real quickstart gateway.

What differs from a reader's shell, and nothing else:
- The working directory is a temporary copy of the repository's config layout (config/quickstart.yaml,
  config/agents.yaml, policies_rego/), so the gateway's audit database lands in its var/, and
  `audit tail` without --config finds it there, as it does in the repository's root.
- The ports are free ones: 8080 (the gateway) and 9300 (the demo MCP server) are replaced in the
  blocks and in the copied quickstart.yaml.
- `.venv/bin/` is the directory of the interpreter running the tests.
- The two setup blocks (`python3 -m venv ...`) are checked, not run: the extras they install exist
  in pyproject.toml and the config they name passes check-config. The first one's
  `portcullis serve ...` is what starts the gateway.
- A block that starts a server (`portcullis serve`, `portcullis demo mcp-server`) runs in the
  background, like the README's "another shell", until the test ends.
- A ```text block right after a block is that block's output, compared with doctest's ELLIPSIS
  and NORMALIZE_WHITESPACE rules (`...` matches anything); a ```yaml block must be a valid
  fragment of the quickstart config.
"""
from __future__ import annotations

import doctest
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml
from markdown_it import MarkdownIt

from gateway.settings import check
from tests.support.harness import REPO, free_socket
from tests.support.waiting import eventually

BIN = Path(sys.executable).parent
README_PORTS = {"8080": "gateway", "8081": "admin", "9300": "demo"}
SETUP = "python3 -m venv"


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    output: str | None = None  # the ```text block that follows, if any

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def readme_blocks() -> list[Block]:
    fences = [t for t in MarkdownIt().parse((REPO / "README.md").read_text()) if t.type == "fence"]
    blocks: list[Block] = []
    for i, t in enumerate(fences):
        if t.info == "text":
            continue
        after = fences[i + 1] if i + 1 < len(fences) else None
        output = after.content if after is not None and after.info == "text" else None
        blocks.append(Block(t.info, t.content, t.map[0] + 1, output))
    return blocks


def commands(text: str) -> list[list[str]]:
    """The `&&`-joined commands of a one-line shell block, each split like the shell would."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == 1, f"expected one command line, got {lines}"
    return [shlex.split(part) for part in lines[0].split("&&")]


def is_server(block: Block) -> bool:
    if block.lang != "bash" or SETUP in block.text:
        return False
    try:
        argv = commands(block.text)
    except AssertionError:
        return False
    return len(argv) == 1 and argv[0][0].endswith("portcullis") and (
        argv[0][1:2] == ["serve"] or argv[0][1:3] == ["demo", "mcp-server"])


def free_port() -> int:
    with free_socket() as sock:
        return sock.getsockname()[1]


class Tour:
    """The temp directory, the port map and the background servers of one README run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = {readme: str(free_port()) for readme in README_PORTS}
        self.env = {k: v for k, v in os.environ.items() if k != "PORTCULLIS_CONFIG"}
        self.servers: list[tuple[subprocess.Popen[bytes], Path]] = []
        (root / "config").mkdir()
        for name in ("quickstart.yaml", "agents.yaml"):
            (root / "config" / name).write_text(self.localize((REPO / "config" / name).read_text()))
        shutil.copytree(REPO / "policies_rego", root / "policies_rego")

    def localize(self, text: str) -> str:
        for readme, port in self.ports.items():
            text = re.sub(rf"\b{readme}\b", port, text)
        return text.replace(".venv/bin/", f"{BIN}/")

    def start(self, argv: list[str]) -> None:
        argv = [self.localize(a) for a in argv]
        log = self.root / f"server{len(self.servers)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.servers.append((proc, log))
        port = int(self.ports["8080"] if argv[1] == "serve" else self.ports["9300"])

        def listening() -> bool:
            assert proc.poll() is None, f"{argv} exited: {log.read_text()}"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        eventually(listening, f"{' '.join(argv[1:3])} to listen on {port}")

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        text = self.localize(block.text)
        argv = ["bash", "-e", "-o", "pipefail", "-c", text] if block.lang == "bash" else [sys.executable, "-"]
        stdin = text if block.lang == "python" else None
        return subprocess.run(argv, cwd=self.root, env=self.env, input=stdin, capture_output=True, text=True,
                              timeout=90)

    def stop(self) -> None:
        for proc, _ in reversed(self.servers):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def tour(tmp_path: Path) -> Iterator[Tour]:
    t = Tour(tmp_path)
    yield t
    t.stop()


def setup_blocks() -> list[Block]:
    return [b for b in readme_blocks() if SETUP in b.text]


def extras_named(block: Block) -> list[str]:
    """The extras of `pip install -e '.[a,b]'` in a setup block."""
    return [e for argv in commands(block.text) for arg in argv
            if (m := re.fullmatch(r"\.\[([\w,-]+)\]", arg)) for e in m.group(1).split(",")]


def test_setup_commands_name_extras_and_a_config_that_exist() -> None:
    blocks = setup_blocks()
    assert len(blocks) == 2, [b.where for b in blocks]
    first = [b for b in readme_blocks() if b.lang in ("bash", "python")][0]
    assert first == blocks[0], "the first README command must be the install-and-serve one"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for block in blocks:
        for extra in extras_named(block):
            assert extra in extras, f"{block.where}: extra {extra!r} is not in pyproject.toml"
        for argv in commands(block.text):
            if "--config" in argv:
                config = argv[argv.index("--config") + 1]
                assert (REPO / config).is_file(), f"{block.where}: {config} does not exist"
                assert check(REPO / config, {}) == [], f"{block.where}: {config} fails check-config"
    # What the tour imports must come with the first command.
    installed = " ".join(" ".join(extras[e]) for e in extras_named(blocks[0]))
    for sdk in ("openai", "anthropic", "mcp"):
        assert re.search(rf"\b{sdk}\b", installed), f"{blocks[0].where} does not install the tour's {sdk} SDK"
    assert "portcullis[demo]" in extras["test"], "the test extra must install what the README tour uses"


def test_every_readme_block_runs_and_prints_what_the_readme_says(tour: Tour) -> None:
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    ran = 0
    for block in readme_blocks():
        if SETUP in block.text:
            serve = commands(block.text)[-1]
            if serve[1:2] == ["serve"]:
                tour.start(serve)
                eventually(lambda: httpx.get(f"http://127.0.0.1:{tour.ports['8080']}/readyz").status_code == 200,
                           "the gateway to be ready")
            continue
        if block.lang == "yaml":
            fragment = yaml.safe_load(block.text)
            config = yaml.safe_load((tour.root / "config" / "quickstart.yaml").read_text())
            path = tour.root / "config" / f"fragment-{block.line}.yaml"
            path.write_text(yaml.safe_dump({**config, **fragment}))
            assert check(path, {}) == [], f"{block.where} is not a valid config fragment"
            continue
        if block.lang not in ("bash", "python"):
            continue
        if is_server(block):
            tour.start(commands(block.text)[0])
            continue
        done = tour.run(block)
        ran += 1
        assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        if block.output is not None:
            assert checker.check_output(block.output, done.stdout, flags), (
                f"{block.where} printed\n{done.stdout}\nbut the README says\n{block.output}")
    assert ran >= 4, "the README's runnable blocks were not found"
