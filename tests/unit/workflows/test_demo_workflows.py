"""The demo's workflows (constellation/demo/workflows/) parse, form valid graphs, and reach only the
demo's models: support-triage only commercially usable ones, ticket-haiku a CC-BY-NC one."""

from __future__ import annotations

import yaml

from constellation.finetune.demo import DEMO_DIR
from constellation.workflows import graph
from constellation.workflows.spec import load_document, parse

DEMO = DEMO_DIR


def _licences() -> dict[str, str]:
    manifest = yaml.safe_load((DEMO / "demo.yaml").read_text())
    out = {a["name"]: a["license"] for a in manifest["adapters"]}
    return out | {b["name"]: b.get("license", "apache-2.0") for b in manifest["base_models"]}


def test_demo_workflows_reach_the_demo_models_with_the_intended_licences() -> None:
    licences = _licences()
    reached = {}
    for path in sorted((DEMO / "workflows").glob("*.yaml")):
        spec = parse(load_document(path.read_text()))
        graph.check(spec)
        reached[path.stem] = {c.model for st in spec.steps.values() for c in st.calls()}
        assert reached[path.stem] <= set(licences), path.name
    assert set(reached) == {"support-triage", "ticket-haiku"}
    assert not any("-nc-" in licences[m] for m in reached["support-triage"])
    assert any("-nc-" in licences[m] for m in reached["ticket-haiku"])
