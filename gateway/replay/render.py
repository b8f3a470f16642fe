"""The replay report as text: `table` (a terminal), `json` (the report itself), `md` (a pull request).

Pure functions of the report dict built by gateway.replay.command.replay.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.replay.compare import DIMENSIONS, KINDS, LABELS, dimensions

TOP = 20  # breakdown rows shown per dimension in table and md (json has them all)
_SHORT = {"allow_to_deny": "allow->deny", "deny_to_allow": "deny->allow", "obligations": "obligations",
          "lifecycle": "violation/approval", "reasons": "reasons only"}


def render(report: Mapping[str, Any], fmt: str) -> str:
    if fmt == "json":
        return orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    if fmt == "md":
        return markdown(report)
    return table(report)


def _n(v: int) -> str:
    return f"{v:,}"


def _shown_kinds(report: Mapping[str, Any]) -> list[str]:
    """Kinds with at least one change (the breakdown's columns)."""
    return [k for k in KINDS if report["changes"][k]["inputs"]]


def _notes(report: Mapping[str, Any]) -> list[str]:
    if report.get("mode") == "shadow":
        return _shadow_notes(report)
    notes = []
    others = report["rows_other_revisions"]
    if others:
        revs = [r for r in report["recorded_revisions"] if r != report["baseline"]["revision"]]
        notes.append(f"{_n(others)} of {_n(report['rows'])} rows were recorded under other policy revisions "
                     f"({', '.join(r[:12] for r in revs[:5])}{', ...' if len(revs) > 5 else ''}): they are "
                     "compared with the baseline set as it is now, not the set that decided them")
    errors = report["errors"]
    for side in ("baseline", "candidate"):
        if errors[side]:
            notes.append(f"the {side} set failed to decide {_n(errors[side])} distinct input(s): counted as "
                         "denials, as the gateway fails closed")
    if report["unreadable_rows"]:
        notes.append(f"{_n(report['unreadable_rows'])} rows had an unreadable policy_input and were skipped")
    if not report["rows"]:
        notes.append("no recorded policy inputs in the window: widen --since or check --config")
    return notes


def _shadow_notes(report: Mapping[str, Any]) -> list[str]:
    notes = []
    for key, what in (("recorded_revisions", "shadow"), ("serving_revisions", "serving")):
        revs = report[key]
        if len(revs) > 1:
            notes.append(f"the rows span {len(revs)} {what} revisions ("
                         + ", ".join(f"{r[:12]}: {_n(n)} rows" for r, n in list(revs.items())[:5])
                         + "): each row is counted as the sets that decided it judged it")
    if report["errors"]["candidate"]:
        notes.append(f"the shadow set failed to decide {_n(report['errors']['candidate'])} distinct input(s): "
                     "counted as denials, as the gateway fails closed")
    if report["unreadable_rows"]:
        notes.append(f"{_n(report['unreadable_rows'])} rows had an unreadable policy_input and were skipped")
    if report.get("truncated"):
        notes.append(f"only the first {_n(report['rows'])} sampled rows were read")
    if not report["rows"]:
        notes.append("no shadow-decided rows in the window: is policy.shadow set, and --since wide enough?")
    return notes


def _title(report: Mapping[str, Any]) -> str:
    b, c = report["baseline"], report["candidate"]
    if report.get("mode") == "shadow":
        return (f"policy shadow-report: shadow set {c['dir']} (revision {c['revision'][:12]}) against the "
                f"serving set (revision {b['revision'][:12]})")
    return (f"policy replay: {c['dir']} (revision {c['revision'][:12]}) against {b['dir']} "
            f"(revision {b['revision'][:12]})")


def _window(report: Mapping[str, Any]) -> str:
    w, f = report["window"], report["filters"]
    text = f"{w['since'] or 'the beginning'} .. {w['until'] or 'now'}"
    extra = [f"{k} {v}" for k, v in f.items() if v]
    return text + (f" ({', '.join(extra)})" if extra else "")


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return [fmt(header), *(fmt(r) for r in rows)]


def _breakdown_rows(report: Mapping[str, Any], dim: str, kinds: list[str]) -> tuple[list[list[str]], int]:
    rows = report["breakdown"][dim]
    out = [[r["key"], *(_n(r[k]["requests"]) if k in r else "0" for k in kinds), _n(r["requests"])]
           for r in rows[:TOP]]
    return out, max(0, len(rows) - TOP)


def table(report: Mapping[str, Any]) -> str:
    lines = [_title(report),
             f"window: {_window(report)}",
             f"rows: {_n(report['rows'])}, distinct inputs: {_n(report['inputs'])}", ""]
    lines += _grid(["change", "requests", "inputs"],
                   [[LABELS[k], _n(report["changes"][k]["requests"]), _n(report["changes"][k]["inputs"])]
                    for k in KINDS] + [["unchanged", _n(report["unchanged"]["requests"]),
                                        _n(report["unchanged"]["inputs"])]])
    kinds = _shown_kinds(report)
    if kinds:
        for dim in DIMENSIONS:
            rows, more = _breakdown_rows(report, dim, kinds)
            lines += ["", f"by {dim} (requests)"]
            lines += _grid([dim, *(_SHORT[k] for k in kinds), "total"], rows)
            if more:
                lines.append(f"... {more} more")
    for kind in KINDS:
        for ex in report["examples"][kind]:
            lines += ["", f"[{LABELS[kind]}] {_n(ex['requests'])} request(s), input {ex['input_digest'][:16]}",
                      f"  input:     {_json(ex['input'])}",
                      f"  baseline:  {_decision_text(ex['baseline'])}",
                      f"  candidate: {_decision_text(ex['candidate'])}"]
    notes = _notes(report)
    if notes:
        lines += ["", *(f"note: {n}" for n in notes)]
    if report["fail_on"]:
        lines += ["", f"--fail-on {report['fail_on']}: {'FAILED' if report['failed'] else 'passed'}"]
    return "\n".join(lines)


def _json(v: Any) -> str:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()


def _decision_text(d: Mapping[str, Any]) -> str:
    parts = ["allow" if d["allow"] else "deny"]
    if d["reasons"]:
        parts.append("reasons " + "; ".join(d["reasons"]))
    if d["obligations"]:
        parts.append("obligations " + _json(d["obligations"]))
    for k in ("violation", "approval"):
        if k in d:
            parts.append(f"{k} {_json(d[k])}")
    return ", ".join(parts)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_label(kind: str) -> str:
    return LABELS[kind].replace("->", "→")


def markdown(report: Mapping[str, Any]) -> str:
    b, c = report["baseline"], report["candidate"]
    changed = sum(report["changes"][k]["requests"] for k in KINDS)
    if report.get("mode") == "shadow":
        lines = [f"## Shadow mode: `{c['dir']}` against the serving set", "",
                 (f"The shadow set decided **{_n(report['rows'])}** sampled requests (**{_n(report['inputs'])}** "
                  f"distinct inputs) from {_window(report)}. Serving revision `{b['revision'][:12]}`, "
                  f"shadow `{c['revision'][:12]}`."), ""]
    else:
        lines = [f"## Policy replay: `{c['dir']}` against `{b['dir']}`", "",
                 (f"Replayed **{_n(report['rows'])}** recorded requests (**{_n(report['inputs'])}** distinct "
                  f"inputs) from {_window(report)}. Baseline revision `{b['revision'][:12]}`, "
                  f"candidate `{c['revision'][:12]}`."),
                 ""]
    lines.append(f"**{_n(changed)}** request(s) would be decided differently." if changed else
                 "No recorded request would be decided differently.")
    lines += ["", "| change | requests | distinct inputs |", "|---|---:|---:|"]
    lines += [f"| {_md_label(k)} | {_n(report['changes'][k]['requests'])} | {_n(report['changes'][k]['inputs'])} |"
              for k in KINDS]
    lines.append(f"| unchanged | {_n(report['unchanged']['requests'])} | {_n(report['unchanged']['inputs'])} |")
    kinds = _shown_kinds(report)
    if kinds:
        for dim in DIMENSIONS:
            rows, more = _breakdown_rows(report, dim, kinds)
            lines += ["", f"### By {dim} (requests)", "",
                      "| " + " | ".join([dim, *(_md_label(k) for k in kinds), "total"]) + " |",
                      "|---|" + "---:|" * (len(kinds) + 1)]
            lines += ["| " + " | ".join(_cell(x) for x in r) + " |" for r in rows]
            if more:
                lines.append(f"\n… and {more} more")
    examples = [(k, ex) for k in KINDS for ex in report["examples"][k]]
    if examples:
        lines += ["", "### Examples"]
    for kind, ex in examples:
        agent, action, resource = dimensions(ex["input"])
        bd, cd = ex["baseline"], ex["candidate"]
        lines += ["", (f"<details><summary>{_md_label(kind)}: {_n(ex['requests'])} request(s), "
                       f"{_cell(agent)} {_cell(action)} {_cell(resource)}</summary>"), "",
                  "| | baseline | candidate |", "|---|---|---|",
                  f"| decision | {'allow' if bd['allow'] else 'deny'} | {'allow' if cd['allow'] else 'deny'} |",
                  f"| reasons | {_cell('; '.join(bd['reasons']) or '-')} | {_cell('; '.join(cd['reasons']) or '-')} |",
                  f"| obligations | `{_cell(_json(bd['obligations']))}` | `{_cell(_json(cd['obligations']))}` |"]
        for k in ("violation", "approval"):
            if k in bd or k in cd:
                lines.append(f"| {k} | {_cell(_json(bd.get(k)))} | {_cell(_json(cd.get(k)))} |")
        lines += ["", "```json", orjson.dumps(ex["input"], option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
                  .decode(), "```", "", "</details>"]
    notes = _notes(report)
    if notes:
        lines += ["", *(f"> **Note:** {n}" for n in notes)]
    if report["fail_on"]:
        lines += ["", f"`--fail-on {report['fail_on']}`: **{'failed' if report['failed'] else 'passed'}**"]
    return "\n".join(lines)
