"""docs/policies.md: a section per policy zonemesh applies, and its examples are accepted as the
API accepts them (they are working examples, not sketches)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from zonemesh.shared.resources.codec import from_universal
from zonemesh.zone_cp.xds.policies import PLUGINS

PAGE = Path(__file__).resolve().parents[2] / "docs" / "policies.md"
YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def test_every_applied_policy_has_a_section_with_an_example() -> None:
    text = PAGE.read_text()
    for plugin in PLUGINS:
        section = text.split(f"\n## {plugin.type}\n", 1)
        assert len(section) == 2, f"docs/policies.md has no section '## {plugin.type}'"
        body = section[1].split("\n## ", 1)[0]
        examples = [yaml.safe_load(block) for block in YAML_BLOCK.findall(body)]
        assert any(doc["type"] == plugin.type for doc in examples), f"no {plugin.type} example in its section"


def test_examples_are_accepted_by_the_api_validation() -> None:
    blocks = YAML_BLOCK.findall(PAGE.read_text())
    assert len(blocks) >= len(PLUGINS)
    for block in blocks:
        from_universal(yaml.safe_load(block))  # raises ValidationError naming the bad field
