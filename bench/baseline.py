"""`bench run --baseline-ref REV`: the governed gateway as it was at git revision REV, in the same run.

REV is checked out with `git worktree add --detach` into a temporary directory (removed
afterwards) and served from there as `python -m gateway.cli serve`, with cwd and PYTHONPATH
set to that checkout, on the config, fixtures and core of the `governed` target.

The working tree's editable install stays active in that interpreter (its finder sits behind
PYTHONPATH on sys.meta_path, and still answers for any module the checkout lacks). So the code
that runs is proven, not assumed: the baseline runs with PYTHONVERBOSE=1, which makes Python
log every file it imports, and the run stops (BaselineError) unless the gateway came from the
checkout and nothing of `gateway`/`adapters` came from the working tree or site-packages. Verbose
mode only prints when a module is loaded, so it costs nothing per request.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import site
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bench import fixtures, procs, report

PREFIX = report.BASELINE_PREFIX  # target names: governed@<short sha>
PACKAGES = ("gateway", "adapters")
_CODE_LINE = "# code object from "  # PYTHONVERBOSE: one line per module file executed


class BaselineError(RuntimeError):
    """The baseline revision cannot be measured as asked; the message says why."""


def _git(*args: str, cwd: Path = fixtures.REPO) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise BaselineError(f"git {' '.join(args)} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


@dataclass(frozen=True)
class Checkout:
    """A detached worktree of one commit."""

    ref: str        # as the user gave it (`main~3`, a sha, a tag)
    commit: str     # the full sha it resolved to
    short: str
    subject: str
    path: Path

    @property
    def target(self) -> str:
        return PREFIX + self.short

    def env(self, *, verbose: bool = True) -> dict[str, str]:
        return {"PYTHONPATH": str(self.path), **({"PYTHONVERBOSE": "1"} if verbose else {})}

    def gateway_cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gateway.cli", *args]

    def describe(self) -> dict[str, str]:
        return {"ref": self.ref, "commit": self.commit, "target": self.target, "subject": self.subject,
                "code_path": str(self.path / "gateway")}


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Checkout]:
    """A `git worktree add --detach` of `ref`, checked to import its own gateway; removed on exit."""
    try:
        commit = _git("rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")
    except BaselineError as e:
        raise BaselineError(f"--baseline-ref {ref!r} is not a commit of {fixtures.REPO} ({e})") from None
    parent = Path(tempfile.mkdtemp(prefix="portcullis-baseline-"))
    path = parent / "src"
    try:
        _git("worktree", "add", "--detach", str(path), commit)
    except BaselineError:
        shutil.rmtree(parent, ignore_errors=True)
        raise
    try:
        co = Checkout(ref=ref, commit=commit, short=_git("rev-parse", "--short", commit),
                      subject=_git("log", "-1", "--format=%s", commit), path=path)
        if _git("rev-parse", "HEAD", cwd=path) != commit:
            raise BaselineError(f"the worktree at {path} is not at {commit}")
        check_imports(co)
        yield co
    finally:
        _remove(path)
        shutil.rmtree(parent, ignore_errors=True)


def _remove(path: Path) -> None:
    try:
        _git("worktree", "remove", "--force", str(path))
    except BaselineError as e:
        print(f"warning: {e}; remove the directory and run `git worktree prune`", file=sys.stderr)


def imported_files(verbose_log: str) -> list[str]:
    """The module files a PYTHONVERBOSE process executed, from its stderr."""
    out = []
    for line in verbose_log.splitlines():
        if line.startswith(_CODE_LINE):
            out.append(line[len(_CODE_LINE):].strip().strip("'"))
    return out


def wrong_origins(files: list[str], checkout_dir: Path, elsewhere: list[Path]) -> list[str]:
    """Problems with where `gateway`/`adapters` were imported from; empty when all is well.

    `elsewhere` are the roots the code must not come from (the working tree, site-packages).
    """
    def under(f: str, root: Path) -> bool:
        return any(f.startswith(f"{root}/{pkg}/") for pkg in PACKAGES)

    problems = [f"imported from outside the checkout: {f}" for f in files
                if any(under(f, root) for root in elsewhere)]
    if not any(f.startswith(f"{checkout_dir}/gateway/") for f in files):
        problems.insert(0, f"no gateway module was imported from {checkout_dir}")
    return problems


def _forbidden_roots() -> list[Path]:
    return [fixtures.REPO, *(Path(p) for p in site.getsitepackages())]


def verify_origin(verbose_log: str, co: Checkout, what: str) -> None:
    problems = wrong_origins(imported_files(verbose_log), co.path, _forbidden_roots())
    if problems:
        shown = "\n  ".join(problems[:10])
        raise BaselineError(f"{what} for {co.target} did not run {co.ref}'s code (the working tree's "
                            f"editable install shadows it?):\n  {shown}")


def _without_import_log(text: str) -> str:
    """`text` without PYTHONVERBOSE's lines, so errors show what the program said."""
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(("# ", "import '")))


def check_imports(co: Checkout) -> None:
    """The quick check, before anything is measured: gateway.cli imports from the checkout."""
    r = subprocess.run(co.gateway_cmd("--help"), cwd=co.path, env=_environ(co.env()),
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise BaselineError(f"`python -m gateway.cli --help` fails at {co.ref}:\n"
                            f"{_without_import_log(r.stderr)[-2000:]}")
    verify_origin(r.stderr, co, "`python -m gateway.cli --help`")


def _environ(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


def validate_config(co: Checkout, config: Path) -> None:
    """The governed target's config must validate at the revision too, or the comparison is off."""
    r = subprocess.run(co.gateway_cmd("check-config", str(config)), cwd=co.path,
                       env=_environ(co.env(verbose=False)), capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        said = (r.stdout + r.stderr).strip()[-3000:]
        raise BaselineError(
            f"the benchmark config does not validate at {co.ref} ({co.short}): that revision's config "
            f"schema differs from the working tree's, so {co.target} cannot run on the same config as "
            f"`governed`. `portcullis check-config` there says:\n{said}")


def start(co: Checkout, name: str, config: Path, port: int, workdir: Path) -> procs.Server:
    """Serve `config` from the checkout on the proxy core; verified to run the checkout's code."""
    validate_config(co, config)
    server = procs.start(name, co.gateway_cmd("serve", "--config", str(config)), port, workdir,
                         cpus=procs.PROXY_CPU, env=co.env(), cwd=co.path)
    try:
        procs.wait_ready(server, timeout_s=120, path="/readyz")
        verify_origin(server.log.read_text(errors="replace"), co, "the started gateway")
    except RuntimeError as e:
        procs.stop(server)
        if isinstance(e, BaselineError):
            raise
        tail = _without_import_log(server.log.read_text(errors="replace")).splitlines()[-15:]
        raise BaselineError(f"{name} did not start:\n" + "\n".join(tail)) from None
    return server
