"""The Dockerfile, parsed (no image can be built here): stages, user, entrypoint, healthcheck,
and that its paths are the chart's mounts. The entrypoint itself runs in
tests/e2e/test_container_entrypoint.py.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.support.chart import (AGENTS_DIR, CONFIG_PATH, DATA_DIR, ENTRYPOINT, POLICIES_DIR, PORT, REPO,
                                 container, gateway_argv, gateway_config, mounts, pod_spec, render)


def stages() -> list[list[dict]]:
    """Instructions per build stage (comments dropped)."""
    out: list[list[dict]] = []
    for ins in DockerfileParser(path=str(REPO / "Dockerfile")).structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out and ins["instruction"] != "COMMENT":
            out[-1].append(ins)
    return out


def values(stage: list[dict], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)  # exec form: a JSON array, so no shell is involved and signals reach us
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed)
    return parsed


@pytest.fixture(scope="module")
def final() -> list[dict]:
    return stages()[-1]


def test_multi_stage_on_python_slim() -> None:
    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    assert parser.is_multistage
    build, final = stages()
    assert build[0]["value"].endswith("AS build") and final[0]["value"].endswith("AS runtime")
    arg = next(i["value"] for i in parser.structure if i["instruction"] == "ARG")
    assert arg == "PYTHON_IMAGE=python:3.11-slim"
    assert parser.baseimage == "python:3.11-slim"
    # The project and its dependencies are installed in the build stage, into a venv the final copies.
    assert any("pip install" in v and "." in v.split() for v in values(build, "RUN"))
    assert "--from=build /opt/portcullis /opt/portcullis" in values(final, "COPY")
    assert not any("pip install" in v for v in values(final, "RUN"))


def test_runs_as_a_non_root_user(final) -> None:
    (user,) = values(final, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and gid.isdigit() and int(gid) != 0
    assert int(uid) == pod_spec(render())["securityContext"]["runAsUser"]
    assert f"--uid {uid}" in " ".join(values(final, "RUN"))


def test_entrypoint_is_the_charts_command(final) -> None:
    (entrypoint,), (cmd,) = values(final, "ENTRYPOINT"), values(final, "CMD")
    argv = exec_form(entrypoint) + exec_form(cmd)
    assert argv == ENTRYPOINT == ["portcullis", "serve", "--config", CONFIG_PATH]
    assert gateway_argv(render()) == argv
    assert "PATH=/opt/portcullis/bin:$PATH" in " ".join(values(final, "ENV"))


def test_healthcheck_asks_healthz_with_the_stdlib(final) -> None:
    (hc,) = values(final, "HEALTHCHECK")
    options, _, cmd = hc.partition("CMD")
    assert re.search(r"--interval=\d+s", options) and re.search(r"--timeout=\d+s", options)
    argv = exec_form(cmd.strip())
    assert argv[:2] == ["python", "-c"] and "urllib.request" in argv[2]
    assert f"http://127.0.0.1:{PORT}/healthz" in argv[2]
    assert not any(tool in hc for tool in ("curl", "wget"))  # not in the slim image


def test_paths_are_the_charts_mounts(final) -> None:
    rendered = render()
    mounted = mounts(rendered)
    cfg = gateway_config(rendered)
    (volume,) = values(final, "VOLUME")
    writable = set(exec_form(volume))
    # What the image may write to is exactly what the chart mounts writable (the rest is read-only).
    gw = container(rendered)
    assert writable == {m["mountPath"] for m in gw["volumeMounts"] if not m.get("readOnly")} == {DATA_DIR, "/tmp"}
    assert gw["securityContext"]["readOnlyRootFilesystem"] is True
    (workdir,) = [v for v in values(final, "WORKDIR")]
    assert workdir == DATA_DIR
    assert f"HOME={DATA_DIR}" in " ".join(values(final, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in " ".join(values(final, "ENV"))  # no .pyc writes on a read-only root
    made = " ".join(values(final, "RUN"))
    for path in (AGENTS_DIR, POLICIES_DIR, DATA_DIR):
        assert path in made.split(), f"{path} is not created in the image"
    assert f"chown 10001:10001 {DATA_DIR}" in made
    assert {CONFIG_PATH, AGENTS_DIR, POLICIES_DIR, DATA_DIR} <= set(mounted)
    assert f"policies_rego/ {POLICIES_DIR}/" in values(final, "COPY")
    assert cfg["policy"]["dir"] == POLICIES_DIR
    assert cfg["audit"]["spool_path"].startswith(DATA_DIR + "/")
    assert values(final, "EXPOSE") == [str(PORT)]
    assert container(rendered)["ports"][0]["containerPort"] == PORT == cfg["server"]["port"]


def _ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path (or a parent directory of it) decides."""
    parts = path.split("/")
    result = False
    for negated, rx in patterns:
        if any(rx.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            result = not negated
    return result


def _patterns() -> list[tuple[bool, re.Pattern[str]]]:
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        out.append((negated, re.compile(rx.replace(r"\?", "[^/]"))))
    return out


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = _patterns()
    assert patterns[0] == (False, re.compile(r"[^/]*")), ".dockerignore should start with * (an allow-list)"
    context = set()
    for root, dirs, files in os.walk(REPO):
        rel = Path(root).relative_to(REPO)
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", ".venvs", "node_modules")]
        for f in files:
            p = (rel / f).as_posix()
            if not _ignored(p, patterns):
                context.add(p)
    copied = {"pyproject.toml", "README.md", "LICENSE", "gateway", "adapters", "policies_rego"}
    assert {p.split("/")[0] for p in context} == copied
    assert not [p for p in context if "__pycache__" in p or p.endswith((".pyc", ".db", ".spool"))]
    # Every source the Dockerfile copies from the context is in it.
    for stage in stages():
        for v in values(stage, "COPY"):
            if v.startswith("--from"):
                continue
            for src in v.split()[:-1]:
                assert not _ignored(src.rstrip("/"), patterns), f"COPY {src} is excluded by .dockerignore"
    assert "tests/unit/test_dockerfile.py" not in context and ".venv/bin/python" not in context
