"""The default policy set with a team's own vocabulary: maturities renamed, tier 4 renumbered 7."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.support.harness import REPO

RENAMED = {"student": "trainee", "intern": "junior", "supervised": "senior", "autonomous": "lead"}
TEAM_TIERS = frozenset({0, 1, 2, 3, 7})


def own_vocabulary(policy_dir: Path) -> Path:
    """Rewrite `policy_dir`'s data.json in place with the team's names; returns `policy_dir`."""
    path = policy_dir / "portcullis" / "config" / "data.json"
    text = path.read_text()
    for old, new in RENAMED.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    data = json.loads(text)
    data["tiers"]["7"] = data["tiers"].pop("4")
    path.write_text(json.dumps(data, indent=2))
    return policy_dir


def team_policies(dst: Path) -> Path:
    """A copy of policies_rego at `dst` with the team's vocabulary."""
    return own_vocabulary(Path(shutil.copytree(REPO / "policies_rego", dst)))
