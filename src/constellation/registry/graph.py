"""The constellation as a graph: bases -> adapters and fine-tunes -> the data sets they learned
from -> the contributors behind each, limited to what one tenant can see, each model marked
with whether that tenant's declarations permit it and its effective terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.registry.effective import permissions
from constellation.registry.models import list_models
from constellation.registry.tables import ContributionTerm, Contributor, Dataset, Licence, Model
from constellation.registry.tenants import get_tenant

FAMILIES = ("permissive", "share-alike", "non-commercial", "restricted")


def licence_family(lic: Licence) -> str:
    """One of FAMILIES: the strongest obligation a licence carries, for colouring a picture."""
    if not lic.commercial_use:
        return "non-commercial"
    if lic.restrictions or lic.user_limit is not None:
        return "restricted"
    if lic.share_alike:
        return "share-alike"
    return "permissive"


@dataclass(slots=True)
class Graph:
    """Nodes keyed by id (`model:NAME`, `dataset:NAME`, `contributor:ID`) and edges keyed by
    (source, target), each edge listing its relations (`adapter`, `trained_on`, `author`, ...)."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def edge(self, source: str, target: str, relation: str, **extra: Any) -> None:
        e = self.edges.setdefault((source, target), {"source": source, "target": target, "relations": []})
        if relation not in e["relations"]:
            e["relations"].append(relation)
        e.update(extra)


def lineage_graph(s: Session, *, tenant_id: str, all_tenants: bool = False) -> dict[str, Any]:
    """The graph of the models `tenant_id` can see (every model with `all_tenants`), their data
    sets and contributors; verdicts are for `tenant_id`'s declarations."""
    found = list_models(s, tenant_id=tenant_id, all_tenants=all_tenants)
    verdicts = permissions(s, tenant=get_tenant(s, id=tenant_id), models=found)
    catalog = {lic.id: lic for lic in s.scalars(select(Licence))}
    by_id = {m.id: m for m in found}
    g = Graph()
    for m in found:
        terms, refusal = verdicts[m.name]
        base = by_id.get(m.base_id) if m.base_id is not None else None
        g.nodes[f"model:{m.name}"] = {
            **_artifact(f"model:{m.name}", m.name, m.kind, catalog[m.licence_id]),
            "task": m.task,
            "base": base.name if base else None,
            "permitted": refusal is None,
            "refusal": {"code": refusal.code, "message": refusal.message} if refusal else None,
            "effective_terms": terms.as_dict(),
        }
        if base is not None:
            g.edge(f"model:{base.name}", f"model:{m.name}", m.kind)
        g.edge(f"model:{m.name}", f"contributor:{m.author_id}", "author")
        total = sum(link.weight for link in m.dataset_links)
        for link in m.dataset_links:
            d, node = link.dataset, f"dataset:{link.dataset.name}"
            g.nodes.setdefault(node, _dataset(d, catalog[d.licence_id]))
            g.edge(f"model:{m.name}", node, "trained_on", weight=link.weight, weight_total=total)
            g.edge(node, f"contributor:{d.provider_id}", "provider")
    _payees(s, g, found)
    _contributors(s, g)
    return {
        "object": "lineage_graph",
        "tenant": tenant_id,
        "families": list(FAMILIES),
        "nodes": sorted(g.nodes.values(), key=lambda n: (_ORDER[n["type"]], n["name"])),
        "edges": sorted(g.edges.values(), key=lambda e: (e["source"], e["target"])),
    }


_ORDER = {"base": 0, "adapter": 1, "finetune": 1, "dataset": 2, "contributor": 3}


def _artifact(node_id: str, name: str, type_: str, lic: Licence) -> dict[str, Any]:
    return {"id": node_id, "type": type_, "name": name, "license": lic.id, "family": licence_family(lic)}


def _dataset(d: Dataset, lic: Licence) -> dict[str, Any]:
    return {**_artifact(f"dataset:{d.name}", d.name, "dataset", lic), "examples": d.example_count}


def _payees(s: Session, g: Graph, models: list[Model]) -> None:
    """Edges to the contributors paid by a contribution term of a shown model or data set (an
    artifact may pay someone other than its author: the base's co-authors, say)."""
    model_ids = {m.id: m.name for m in models}
    dataset_ids = {link.dataset.id: link.dataset.name for m in models for link in m.dataset_links}
    for t in s.scalars(select(ContributionTerm)):
        names = model_ids if t.subject_type == "model" else dataset_ids
        name = names.get(t.subject_id)
        if name is not None:
            g.edge(f"{t.subject_type}:{name}", f"contributor:{t.contributor_id}", "paid")


def _contributors(s: Session, g: Graph) -> None:
    targets = (e["target"] for e in g.edges.values())
    wanted = {t.split(":", 1)[1] for t in targets if t.startswith("contributor:")}
    for c in s.scalars(select(Contributor).where(Contributor.id.in_(wanted))):
        g.nodes[f"contributor:{c.id}"] = {
            "id": f"contributor:{c.id}",
            "type": "contributor",
            "name": c.id,
            "title": c.name,
            "kind": c.kind,
        }
