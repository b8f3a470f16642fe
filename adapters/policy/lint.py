"""Static checks of a policy set: what OPA 1.x would refuse, and data its schema refuses.

regorus ignores comments, so a METADATA block that OPA cannot read loads fine
here and fails in OPA. OPA reads every comment block that starts with
`# METADATA` at column 1 as YAML: the block runs over the comment lines that
follow at column 1 on consecutive rows, up to the next `# METADATA`. So does
this module, and it checks the keys and value types OPA's annotation parser
does, including the scope each kind of statement takes.

A `data.schema.json` beside a `data.json` is a JSON Schema for that file.

`portcullis policy check`, `policy test` and every engine load run these checks.
"""
from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adapters.policy import lint_data
from adapters.policy.bundle import (
    PolicyFiles,
    build_engine,
    collect,
    lifecycle_rules,
    vocabulary,
)
from gateway.errors import PolicyCompileError
from gateway.types import Vocabulary

ANNOTATION_KEYS = ("scope", "title", "description", "related_resources", "authors",
                   "organizations", "schemas", "entrypoint", "custom")
_RULE_SCOPES = ("rule", "document")
_PACKAGE_SCOPES = ("package", "subpackages")

# A string, a raw string (may span lines) or a comment: strings are skipped so a
# `#` inside one is not taken for a comment.
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`|#[^\n]*')
_STATEMENT = re.compile(r"(package|import)\b")
_REGORUS_AT = re.compile(r"--> (\S+?):(\d+):\d+")
_REGORUS_ERROR = re.compile(r"^error: (.*)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Problem:
    file: str  # relative to the policy directory
    line: int | None  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass(frozen=True, slots=True)
class _Block:
    row: int  # of the `# METADATA` line
    rows: tuple[int, ...]  # of the YAML lines after it
    text: str  # the YAML: each comment without `#` and one leading space
    target: str | None  # "package", "import", "rule", or None at the end of the file


def _comments(source: str) -> list[tuple[int, int, str]]:
    """(row, column, text after `#`) of every comment, 1-based."""
    starts = [0] + [i + 1 for i, c in enumerate(source) if c == "\n"]
    out = []
    for m in _TOKEN.finditer(source):
        if m.group().startswith("#"):
            row = bisect.bisect_right(starts, m.start())
            out.append((row, m.start() - starts[row - 1] + 1, m.group()[1:]))
    return out


def string_literals(source: str) -> list[str]:
    """Every string literal of a module, comments skipped."""
    out = []
    for m in _TOKEN.finditer(source):
        token = m.group()
        if token.startswith("`"):
            out.append(token[1:-1])
        elif token.startswith('"'):
            try:
                out.append(json.loads(token))  # Rego's escapes are JSON's
            except ValueError:
                pass
    return out


def _target(lines: list[str], after_row: int) -> str | None:
    """The kind of the first statement after a row, as OPA attaches annotations."""
    for line in lines[after_row:]:
        text = line.strip()
        if text and not text.startswith("#"):
            m = _STATEMENT.match(text)
            return m.group(1) if m else "rule"
    return None


def metadata_blocks(source: str) -> list[_Block]:
    comments, lines = _comments(source), source.splitlines()
    blocks = []
    i = 0
    while i < len(comments):
        row, col, text = comments[i]
        i += 1
        if col != 1 or not text.strip().startswith("METADATA"):
            continue
        rows, body = [], []
        prev = row
        while i < len(comments):
            r, c, t = comments[i]
            if c != 1 or r != prev + 1 or t.strip().startswith("METADATA"):
                break
            rows.append(r)
            body.append(t.removeprefix(" "))
            prev = r
            i += 1
        blocks.append(_Block(row, tuple(rows), "\n".join(body) + "\n", _target(lines, prev)))
    return blocks


def _is_scalar(v: Any) -> bool:
    return not isinstance(v, (dict, list))


def _value_problem(key: str, value: Any) -> str | None:
    """What OPA's decoder or annotation parser refuses about one key's value."""
    if value is None:
        return None  # a YAML null decodes to the zero value in OPA
    if key in ("scope", "title", "description"):
        return None if _is_scalar(value) else f"{key} must be a string"
    if key == "entrypoint":
        return None if isinstance(value, bool) else "entrypoint must be true or false"
    if key == "custom":
        return None if isinstance(value, dict) else "custom must be a mapping"
    if not isinstance(value, list):
        return f"{key} must be a list"
    for item in value:
        if key == "organizations" and not _is_scalar(item):
            return "organizations must be a list of strings"
        if key == "related_resources" and not (
                (isinstance(item, str) and item) or (isinstance(item, dict) and str(item.get("ref") or "").strip())):
            return "each related_resources entry must be a URL or a mapping with a ref"
        if key == "authors" and not (
                (isinstance(item, str) and item.strip())
                or (isinstance(item, dict) and any(str(item.get(k) or "").strip() for k in ("name", "email")))):
            return "each authors entry must be a name or a mapping with a name or email"
        if key == "schemas" and not (
                isinstance(item, dict) and len(item) == 1
                and all(isinstance(v, dict) or (isinstance(v, str) and v.startswith("schema")) for v in item.values())):
            return "each schemas entry must map one path to a schema.<name> reference or a schema"
    return None


def _key_rows(text: str) -> dict[Any, list[int]]:
    """0-based YAML line of each top-level key, every occurrence (to find duplicates)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    out: dict[Any, list[int]] = {}
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            out.setdefault(k.value, []).append(k.start_mark.line)
    return out


def _block_problems(name: str, block: _Block) -> list[Problem]:
    def at(yaml_line: int | None) -> int:
        if yaml_line is None or not block.rows:
            return block.row
        return block.rows[min(yaml_line, len(block.rows) - 1)]

    if not block.text.strip():
        return [Problem(name, block.row, "expected METADATA block, found whitespace")]
    try:
        doc = yaml.safe_load(block.text)
        rows = _key_rows(block.text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        reason = getattr(e, "problem", None) or str(e)
        return [Problem(name, at(mark.line if mark else None), f"METADATA is not valid YAML: {reason}")]
    if not isinstance(doc, dict):
        return [Problem(name, at(0), "METADATA must be a YAML mapping of annotation keys")]
    problems = []
    for key, value in doc.items():
        line = at(rows.get(key, [None])[0])
        if len(rows.get(key, ())) > 1:
            problems.append(Problem(name, at(rows[key][1]), f"METADATA key {key!r} is set twice"))
        if key not in ANNOTATION_KEYS:
            problems.append(Problem(name, line, f"unknown METADATA key {key!r}; OPA's keys are "
                                    f"{', '.join(ANNOTATION_KEYS)} (put your own under custom)"))
        elif (reason := _value_problem(key, value)) is not None:
            problems.append(Problem(name, line, reason))
    if problems:
        return problems
    return _attachment_problems(name, block, doc, at(rows.get("scope", [None])[0]))


def _attachment_problems(name: str, block: _Block, doc: dict[str, Any], scope_line: int) -> list[Problem]:
    """OPA's rules for which statement a scope may annotate, and where entrypoint may go."""
    scope = doc.get("scope") or block.target or ""  # OPA's default: the kind of statement annotated
    if scope not in _RULE_SCOPES + _PACKAGE_SCOPES:
        what = {"import": "an import", "package": "a package", "rule": "a rule"}.get(block.target or "",
                                                                                 "nothing (end of file)")
        return [Problem(name, scope_line, f"invalid annotation scope {scope!r} (annotating {what}); "
                        f"use one of {', '.join(_RULE_SCOPES + _PACKAGE_SCOPES)}")]
    wanted = "rule" if scope in _RULE_SCOPES else "package"
    if block.target != wanted:
        return [Problem(name, scope_line, f"annotation scope {scope!r} must be applied to a {wanted} "
                        f"(have {block.target or 'nothing'})")]
    if doc.get("entrypoint") is True and scope not in ("document", "package"):
        return [Problem(name, scope_line,
                        f"annotation entrypoint applied to non-document or package scope {scope!r}")]
    return []


def annotation_problems(name: str, source: str) -> list[Problem]:
    """Every METADATA block of one module that OPA would refuse."""
    return [p for block in metadata_blocks(source) for p in _block_problems(name, block)]


def data_problems(files: PolicyFiles) -> list[Problem]:
    """Each data.json checked against the data.schema.json beside it, at the line of the failing value."""
    return lint_data.schema_problems(files, Problem)


def check(files: PolicyFiles) -> list[Problem]:
    """The static checks of a collected set; empty when OPA and the schemas would accept it."""
    problems = [p for name, source in files.modules for p in annotation_problems(name, source)]
    problems += data_problems(files)
    for parse in (vocabulary, lifecycle_rules):
        try:
            parse(files.data)
        except PolicyCompileError as e:
            problems.append(Problem(*lint_data.config_problem(files, e), str(e)))
    return problems + lint_data.action_problems(files, Problem)


def raise_for(problems: list[Problem]) -> None:
    if problems:
        raise PolicyCompileError("; ".join(map(str, problems)))


def located(message: str) -> str:
    """regorus' `--> file:row:col` snippet ... `error: reason` as one `file:row: reason` line."""
    where, reason = _REGORUS_AT.search(message), _REGORUS_ERROR.search(message)
    if where is None or reason is None:
        return message
    return f"{where.group(1)}:{where.group(2)}: Rego syntax error: {reason.group(1).strip()}"


def check_policy_dir(policy_dir: Path) -> tuple[list[str], Vocabulary]:
    """Every module (tests too) parsed and checked: the problems, and the set's vocabulary."""
    try:
        files = collect(Path(policy_dir), include_tests=True)
        problems = [str(p) for p in check(files)]
        if problems:
            return problems, Vocabulary()
        build_engine(files)  # Rego syntax, on the embedded engine
    except PolicyCompileError as e:
        return [located(str(e))], Vocabulary()
    return [], vocabulary(files.data)


def check_dir(policy_dir: Path) -> tuple[list[str], int]:
    """`portcullis policy check DIR`: (lines to print, exit code)."""
    problems, vocab = check_policy_dir(policy_dir)
    if problems:
        return [*problems, f"{policy_dir}: {len(problems)} problem(s)"], 1
    return [f"{policy_dir}: OK (tiers {vocab.tier_names() or '-'}; maturities {vocab.maturity_names() or '-'})"], 0
