"""CLI commands for the catalog: models, adapters, data sets, contributors, terms, licences,
tenants and keys. Each goes through the same service functions as the admin API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from constellation.cli._common import JsonOpt, console, emit, opened_platform, split_csv
from constellation.registry import acceptances, ownership, service
from constellation.registry import contributors as contrib_repo
from constellation.registry import datasets as ds_repo
from constellation.registry import licences as lic_repo
from constellation.registry import models as model_repo
from constellation.registry import tenants as tenant_repo
from constellation.registry import terms as terms_repo
from constellation.registry.effective import EffectiveTerms, effective_terms
from constellation.registry.inputs import AdapterIn, BaseIn, parse

models = typer.Typer(help="Register, list, inspect and remove models.", no_args_is_help=True)
adapters = typer.Typer(help="Import LoRA adapters (PEFT format) trained anywhere.", no_args_is_help=True)
datasets = typer.Typer(help="Register the data sets adapters were trained on.", no_args_is_help=True)
contributors = typer.Typer(
    help="People, organisations and infrastructure providers who get paid.", no_args_is_help=True
)
terms = typer.Typer(
    help="What each contributor earns when a model or data set is used.", no_args_is_help=True
)
licences = typer.Typer(help="The licence catalog and custom licences.", no_args_is_help=True)
tenants = typer.Typer(help="Tenants: the teams that call models.", no_args_is_help=True)
keys = typer.Typer(help="API keys: created once, stored hashed, revocable.", no_args_is_help=True)

Task = Annotated[str, typer.Option(help="embedding | classification | causal-lm")]
License = Annotated[
    str | None,
    typer.Option(
        "--license", help="Licence id (see `constellation licences list`); defaults to the model card's."
    ),
]
Author = Annotated[
    str, typer.Option(help="Contributor id of the author (see `constellation contributors list`).")
]
Private = Annotated[str | None, typer.Option("--private-to", help="Make it visible to this tenant only.")]


@models.command("add")
def models_add(
    path: Annotated[
        Path,
        typer.Argument(
            help="A Hugging Face model directory (config.json + *.safetensors), or a GGUF file "
            "(llama.cpp's format: dequantised to fp32 safetensors, tokenizer and chat template kept)."
        ),
    ],
    name: Annotated[str, typer.Option(help="Unique name, used as the OpenAI `model` field.")],
    task: Task,
    author: Author,
    license: License = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels, for classifiers.")] = None,
    private_to: Private = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a base model from a local directory or GGUF file, e.g.
    `constellation models add ./minilm --name minilm --task embedding --author sbert` or
    `constellation models add SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2 --task causal-lm --author hf`."""
    with opened_platform() as p, p.db.session() as s:
        spec = parse(
            BaseIn, path=str(path), name=name, task=task, author=author, license=license,
            labels=split_csv(labels), visibility="private" if private_to else "public",
            owner_tenant=private_to,
        )  # fmt: skip
        m = service.add_base(s, p.store, spec)
        emit(model_repo.model_dict(m, model_repo.lineage(s, model=m)), as_json=as_json)


@models.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List every registered model."""
    with opened_platform() as p, p.db.session() as s:
        rows = [
            model_repo.model_dict(m, model_repo.lineage(s, model=m))
            for m in model_repo.list_models(s, all_tenants=True)
        ]
        emit(
            rows, as_json=as_json, columns=["name", "kind", "task", "base", "license", "author", "visibility"]
        )


@models.command("show")
def models_show(name: str, as_json: JsonOpt = False) -> None:
    """Show one model with its lineage and effective licence terms, each with its source."""
    with opened_platform() as p, p.db.session() as s:
        m = model_repo.get_model(s, name=name)
        terms = effective_terms(s, model=m)
        out = model_repo.model_dict(m, model_repo.lineage(s, model=m))
        if as_json:
            emit({**out, "effective_terms": terms.as_dict()}, as_json=True)
            return
        emit(out, as_json=False)
        print_terms(terms)


def print_terms(t: EffectiveTerms) -> None:
    """Effective terms as readable lines, each term followed by the element it comes from."""
    console.print("[bold]effective licence terms[/bold]", highlight=False)
    blockers = "; ".join(f"non-commercial: {b.source()}" for b in t.commercial_blockers)
    console.print(
        f"  commercial use: {'yes' if t.commercial_use else 'no (' + blockers + ')'}", highlight=False
    )
    src = t.user_limit_source
    limit = f"{t.user_limit:,} monthly active users (from {src.source()})" if src else "none"
    console.print(f"  user limit: {limit}", highlight=False)
    for label, items in (("restrictions", t.restrictions), ("share-alike", t.share_alike)):
        console.print(f"  {label}:{'' if items else ' none'}", highlight=False)
        for term in items:
            console.print(f"    - {term.text}  [dim](from {term.source()})[/dim]", highlight=False)
    if t.acceptance_required:
        console.print(f"  tenants must accept: {', '.join(t.acceptance_required)}", highlight=False)
    console.print("  notices:" + ("" if t.notices else " none"), highlight=False)
    for n in t.notices:
        console.print(f"    - {n}", highlight=False)


@models.command("rm")
def models_rm(name: str) -> None:
    """Remove a model (refused while adapters depend on it)."""
    with opened_platform() as p, p.db.session() as s:
        model_repo.remove_model(s, name=name)
    console.print(f"removed {name}")


@adapters.command("add")
def adapters_add(
    path: Annotated[
        Path,
        typer.Argument(help="A PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."),
    ],
    name: Annotated[str, typer.Option(help="Unique name, used as the OpenAI `model` field.")],
    base: Annotated[str, typer.Option(help="Name of the registered base model it was trained on.")],
    author: Author,
    license: License = None,
    task: Annotated[
        str | None,
        typer.Option(help="Defaults to classification when the adapter has a head, else the base's task."),
    ] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels (default: the head's).")] = None,
    dataset: Annotated[
        list[str] | None,
        typer.Option("--dataset", help="Registered data set it was trained on (repeatable)."),
    ] = None,
    private_to: Private = None,
    as_json: JsonOpt = False,
) -> None:
    """Import a PEFT LoRA adapter onto a registered base; shapes are checked against the base."""
    with opened_platform() as p, p.db.session() as s:
        spec = parse(
            AdapterIn, path=str(path), name=name, base=base, author=author, license=license, task=task,
            labels=split_csv(labels), datasets=dataset or [],
            visibility="private" if private_to else "public", owner_tenant=private_to,
        )  # fmt: skip
        m = service.add_adapter(s, p.store, spec, max_rank=p.settings.engine.max_lora_rank)
        emit(model_repo.model_dict(m, model_repo.lineage(s, model=m)), as_json=as_json)


@datasets.command("add")
def datasets_add(
    path: Annotated[Path, typer.Argument(help="A JSONL file.")],
    name: Annotated[str, typer.Option(help="Unique data set name.")],
    license: Annotated[str, typer.Option("--license", help="Licence id of the data.")],
    provider: Annotated[str, typer.Option(help="Contributor id of the data's provider.")],
    outputs_of: Annotated[
        list[str] | None,
        typer.Option(
            "--outputs-of",
            help="A model (e.g. a provider's) whose outputs the data holds; models trained on it "
            "inherit that model's licence. Repeatable.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a data set (the same bytes registered twice are reused)."""
    with opened_platform() as p, p.db.session() as s:
        d, created = service.register_dataset(
            s, p.store, src=path, name=name, licence=license, provider=provider, outputs_of=outputs_of
        )
        emit({**ds_repo.dataset_dict(d), "created": created}, as_json=as_json)


@datasets.command("list")
def datasets_list(as_json: JsonOpt = False) -> None:
    """List registered data sets."""
    with opened_platform() as p, p.db.session() as s:
        emit(
            [ds_repo.dataset_dict(d) for d in ds_repo.list_datasets(s)],
            as_json=as_json,
            columns=["name", "example_count", "license", "provider", "sha256"],
        )


@contributors.command("add")
def contributors_add(
    id: Annotated[str, typer.Argument(help="Short id, e.g. 'acme-support'.")],
    name: Annotated[str, typer.Option(help="Display name.")],
    kind: Annotated[
        str, typer.Option(help="person | organisation | infrastructure | platform")
    ] = "organisation",
    email: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a contributor."""
    with opened_platform() as p, p.db.session() as s:
        c = contrib_repo.add_contributor(s, id=id, name=name, kind=kind, email=email)
        emit({"id": c.id, "name": c.name, "kind": c.kind}, as_json=as_json)


@contributors.command("list")
def contributors_list(as_json: JsonOpt = False) -> None:
    """List contributors."""
    with opened_platform() as p, p.db.session() as s:
        emit(
            [{"id": c.id, "name": c.name, "kind": c.kind} for c in contrib_repo.list_contributors(s)],
            as_json=as_json,
            columns=["id", "name", "kind"],
        )


@terms.command("set")
def terms_set(
    subject: Annotated[str, typer.Argument(help="Model or data set name.")],
    contributor: Annotated[str, typer.Option(help="Contributor id who earns it.")],
    kind: Annotated[
        str,
        typer.Option(help="per_1k_input_tokens | per_1k_output_tokens | per_request | per_compute_second"),
    ],
    amount_nanos: Annotated[int, typer.Option(help="Integer nano-USD (1 USD = 1,000,000,000).")],
    dataset: Annotated[
        bool, typer.Option("--dataset", help="The subject is a data set, not a model.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create or replace a contribution term, e.g.
    `constellation terms set minilm --contributor sbert --kind per_1k_input_tokens --amount-nanos 2000`."""
    with opened_platform() as p, p.db.session() as s:
        t = terms_repo.set_term(
            s,
            subject_type="dataset" if dataset else "model",
            subject_name=subject,
            contributor_id=contributor,
            kind=kind,
            amount_nanos=amount_nanos,
        )
        emit(
            {
                "subject": subject,
                "contributor": t.contributor_id,
                "kind": t.kind,
                "amount_nanos": t.amount_nanos,
            },
            as_json=as_json,
        )


@terms.command("list")
def terms_list(as_json: JsonOpt = False) -> None:
    """List contribution terms."""
    with opened_platform() as p, p.db.session() as s:
        emit(
            terms_repo.list_terms(s),
            as_json=as_json,
            columns=["subject_type", "subject", "contributor", "kind", "amount_nanos"],
        )


@licences.command("list")
def licences_list(as_json: JsonOpt = False) -> None:
    """List the licence catalog with its machine-readable terms."""
    with opened_platform() as p, p.db.session() as s:
        rows = [lic_repo.licence_dict(lic_repo.find_licence(s, id=i)) for i in lic_repo.licence_ids(s)]
        emit(
            rows,
            as_json=as_json,
            columns=["id", "name", "commercial_use", "share_alike", "user_limit", "restrictions"],
        )


@licences.command("add")
def licences_add(
    file: Annotated[
        Path,
        typer.Argument(
            help="JSON file with id, name, commercial_use, attribution_required, "
            "attribution_text, restrictions, user_limit, share_alike."
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Add a custom licence from a JSON file."""
    from pydantic import ValidationError

    from constellation.cli._common import fail

    try:
        terms = lic_repo.LicenceTerms.model_validate(json.loads(file.read_text()))
    except (ValidationError, ValueError, OSError) as exc:
        raise fail(f"invalid licence file {file}: {exc}") from None
    with opened_platform() as p, p.db.session() as s:
        emit(lic_repo.licence_dict(lic_repo.add_custom_licence(s, terms=terms)), as_json=as_json)


@tenants.command("add")
def tenants_add(
    id: Annotated[str, typer.Argument(help="Short id, e.g. 'acme'.")],
    name: Annotated[str | None, typer.Option(help="Display name (default: the id).")] = None,
    declared_use: Annotated[str, typer.Option(help="commercial | non-commercial")] = "commercial",
    monthly_active_users: Annotated[int, typer.Option(help="Declared monthly active users.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Create a tenant."""
    with opened_platform() as p, p.db.session() as s:
        t = tenant_repo.add_tenant(
            s, id=id, name=name or id, declared_use=declared_use, monthly_active_users=monthly_active_users
        )
        emit({"id": t.id, "name": t.name, "declared_use": t.declared_use}, as_json=as_json)


@tenants.command("set")
def tenants_set(
    id: Annotated[str, typer.Argument(help="Tenant id.")],
    declared_use: Annotated[str | None, typer.Option(help="commercial | non-commercial")] = None,
    monthly_active_users: Annotated[int | None, typer.Option(help="Declared monthly active users.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute (0 = unlimited).")] = None,
    tpm: Annotated[int | None, typer.Option(help="Estimated tokens per minute (0 = unlimited).")] = None,
    default_limits: Annotated[
        bool, typer.Option("--default-limits", help="Back to the server's default rate limits.")
    ] = False,
    data_stays: Annotated[
        bool | None,
        typer.Option(
            "--data-stays-on-platform/--data-may-leave",
            help="Whether the tenant's data must stay on the platform: if so, models of upstream "
            "providers outside it are refused (403) before anything is sent.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Update a tenant's declarations and rate limits, e.g. `constellation tenants set acme
    --declared-use non-commercial` or `constellation tenants set acme --rpm 600 --tpm 200000`."""
    limits: dict[str, int | None] = dict.fromkeys(tenant_repo.RATE_LIMIT_FIELDS) if default_limits else {}
    limits |= {k: v for k, v in (("requests_per_minute", rpm), ("tokens_per_minute", tpm)) if v is not None}
    with opened_platform() as p, p.db.session() as s:
        tenant_repo.set_rate_limits(s, tenant_id=id, changes=limits)
        if data_stays is not None:
            tenant_repo.set_data_residency(s, tenant_id=id, stays_on_platform=data_stays)
        t = acceptances.set_declarations(
            s, tenant_id=id, declared_use=declared_use, monthly_active_users=monthly_active_users
        )
        emit(
            {
                "id": t.id,
                "declared_use": t.declared_use,
                "monthly_active_users": t.monthly_active_users,
                "requests_per_minute": t.requests_per_minute,
                "tokens_per_minute": t.tokens_per_minute,
                "data_stays_on_platform": t.data_stays_on_platform,
            },
            as_json=as_json,
        )


LicenceOpt = Annotated[str, typer.Option("--license", help="Licence id whose use restrictions apply.")]


@tenants.command("accept")
def tenants_accept(
    id: Annotated[str, typer.Argument(help="Tenant id.")], license: LicenceOpt, as_json: JsonOpt = False
) -> None:
    """Record the tenant's acceptance of a licence's flow-down use restrictions (e.g. openrail-m)."""
    with opened_platform() as p, p.db.session() as s:
        a = acceptances.accept(s, tenant_id=id, licence_id=license, key_id=None, via="cli")
        emit(acceptances.acceptance_dict(a), as_json=as_json)


@tenants.command("withdraw")
def tenants_withdraw(
    id: Annotated[str, typer.Argument(help="Tenant id.")], license: LicenceOpt, as_json: JsonOpt = False
) -> None:
    """Withdraw an acceptance; models needing it are refused from then on."""
    with opened_platform() as p, p.db.session() as s:
        emit(
            acceptances.acceptance_dict(acceptances.withdraw(s, tenant_id=id, licence_id=license)),
            as_json=as_json,
        )


@tenants.command("acceptances")
def tenants_acceptances(
    id: Annotated[str, typer.Argument(help="Tenant id.")],
    include_withdrawn: Annotated[bool, typer.Option("--all", help="Include withdrawn acceptances.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the licences whose restrictions the tenant has accepted, with time and key."""
    with opened_platform() as p, p.db.session() as s:
        rows = acceptances.list_acceptances(s, tenant_id=id, include_withdrawn=include_withdrawn)
        emit(
            [acceptances.acceptance_dict(a) for a in rows],
            as_json=as_json,
            columns=["license", "accepted_at", "key_id", "via", "withdrawn_at"],
        )


@tenants.command("list")
def tenants_list(as_json: JsonOpt = False) -> None:
    """List tenants."""
    with opened_platform() as p, p.db.session() as s:
        emit(
            [
                {
                    "id": t.id,
                    "name": t.name,
                    "declared_use": t.declared_use,
                    "monthly_active_users": t.monthly_active_users,
                }
                for t in tenant_repo.list_tenants(s)
            ],
            as_json=as_json,
            columns=["id", "name", "declared_use", "monthly_active_users"],
        )


ContributorOpt = Annotated[str, typer.Option("--contributor", help="A registered contributor id.")]


@tenants.command("link")
def tenants_link(
    id: Annotated[str, typer.Argument(help="Tenant id.")],
    contributor: ContributorOpt,
    as_json: JsonOpt = False,
) -> None:
    """Record that the tenant owns a contributor identity: its keys may then credit it as author
    or data provider of their fine-tunes (and no contributor it does not own)."""
    with opened_platform() as p, p.db.session() as s:
        row, created = ownership.link(s, tenant_id=id, contributor_id=contributor)
        emit({**ownership.link_dict(row), "created": created}, as_json=as_json)


@tenants.command("unlink")
def tenants_unlink(
    id: Annotated[str, typer.Argument(help="Tenant id.")], contributor: ContributorOpt
) -> None:
    """Remove a link; adapters already trained keep their author."""
    with opened_platform() as p, p.db.session() as s:
        ownership.unlink(s, tenant_id=id, contributor_id=contributor)
    console.print(f"tenant {id} no longer owns contributor {contributor}")


@tenants.command("contributors")
def tenants_contributors(
    id: Annotated[str, typer.Argument(help="Tenant id.")], as_json: JsonOpt = False
) -> None:
    """List the contributor identities the tenant owns."""
    with opened_platform() as p, p.db.session() as s:
        rows = [ownership.link_dict(r) for r in ownership.links(s, tenant_id=id)]
        emit(rows, as_json=as_json, columns=["contributor", "created_at"])


@keys.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant id the key belongs to.")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="inference | admin | contributor:<id> (repeatable; default inference)."),
    ] = None,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create an API key. The key is printed once; only its hash is stored."""
    with opened_platform() as p, p.db.session() as s:
        new = tenant_repo.create_key(s, tenant_id=tenant, scopes=scope or ["inference"], name=name)
        emit(
            {"id": new.row.id, "tenant": tenant, "scopes": new.row.scopes, "key": new.secret}, as_json=as_json
        )
    if not as_json:
        console.print("[yellow]Store the key now: it cannot be shown again.[/yellow]")


@keys.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (the part after 'cst_').")]) -> None:
    """Revoke a key; requests with it get 401 from now on."""
    with opened_platform() as p, p.db.session() as s:
        tenant_repo.revoke_key(s, key_id=key_id)
    console.print(f"revoked {key_id}")


@keys.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List keys (never their secrets)."""
    with opened_platform() as p, p.db.session() as s:
        emit(
            [
                {
                    "id": k.id,
                    "tenant": k.tenant_id,
                    "scopes": k.scopes,
                    "name": k.name,
                    "revoked": k.revoked_at is not None,
                }
                for k in tenant_repo.list_keys(s, tenant_id=tenant)
            ],
            as_json=as_json,
            columns=["id", "tenant", "scopes", "name", "revoked"],
        )
