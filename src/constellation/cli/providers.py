"""`constellation providers ...`: register upstream OpenAI-compatible APIs and expose their
models under local names. Keys are named, never given: the server reads the variable at call time."""

from __future__ import annotations

from typing import Annotated

import typer

from constellation.cli._common import JsonOpt, emit, opened_platform
from constellation.providers.secrets import SecretSource
from constellation.registry import providers as repo

providers = typer.Typer(
    help="Upstream OpenAI-compatible providers (closed models beside open ones).", no_args_is_help=True
)


def _row(
    p: repo.Provider, models: list[tuple[repo.Model, repo.ProviderModel]], secrets: SecretSource
) -> dict[str, object]:
    present = p.api_key_env is None or secrets.get(p.api_key_env) is not None
    return {**repo.provider_dict(p, models), "key_present_here": present}


@providers.command("add")
def providers_add(
    name: Annotated[str, typer.Argument(help="Provider name (a slug, e.g. 'openai').")],
    base_url: Annotated[
        str,
        typer.Option(
            "--base-url", help="The upstream's OpenAI-compatible root, e.g. https://api.openai.com/v1."
        ),
    ],
    api_key_env: Annotated[
        str | None,
        typer.Option(
            "--api-key-env",
            help="Environment variable holding the key (or its entry in the file named by "
            "CONSTELLATION_PROVIDER_SECRETS_FILE). Read by the server at call time; never stored. "
            "Omit for an upstream without auth.",
        ),
    ] = None,
    contributor: Annotated[
        str | None,
        typer.Option(help="Contributor owed the upstream's price (default: one named like the provider)."),
    ] = None,
    on_platform: Annotated[
        bool,
        typer.Option(
            "--on-platform", help="The upstream runs on this platform's infrastructure (data stays here)."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds an upstream call may take, retries included.")
    ] = 60.0,
    max_concurrency: Annotated[
        int, typer.Option(help="Requests in flight to it at once (the rest wait).")
    ] = 64,
    max_retries: Annotated[
        int, typer.Option(help="Retries of a failed non-streamed call (5xx, 429, connection).")
    ] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Register an upstream that speaks the OpenAI API, e.g. `constellation providers add openai
    --base-url https://api.openai.com/v1 --api-key-env OPENAI_API_KEY`."""
    with opened_platform() as p, p.db.session() as s:
        row = repo.add_provider(
            s,
            id=name,
            base_url=base_url,
            api_key_env=api_key_env,
            contributor_id=contributor,
            on_platform=on_platform,
            timeout_s=timeout,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
        )
        emit(_row(row, [], SecretSource(p.settings.provider_secrets_file)), as_json=as_json)


@providers.command("expose")
def providers_expose(
    name: Annotated[str, typer.Argument(help="Provider name.")],
    model: Annotated[str, typer.Option("--model", help="The upstream's model id, e.g. gpt-4o-mini.")],
    local_name: Annotated[str, typer.Option("--as", help="The local model name clients will use.")],
    task: Annotated[str, typer.Option("--task", help="causal-lm | embedding")],
    price_in: Annotated[
        int, typer.Option("--price-per-1k-input", help="Upstream list price, nano-USD per 1k input tokens.")
    ] = 0,
    price_out: Annotated[
        int, typer.Option("--price-per-1k-output", help="Upstream list price, nano-USD per 1k output tokens.")
    ] = 0,
    license: Annotated[
        str | None,
        typer.Option("--license", help=f"Licence id of its terms (default {repo.DEFAULT_LICENCE})."),
    ] = None,
    private_to: Annotated[
        str | None, typer.Option("--private-to", help="Only this tenant may see it.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish one upstream model under a local name, with its list price (a leg owed to the
    provider on every request) and its terms, e.g. `constellation providers expose openai
    --model gpt-4o-mini --as gpt-mini --task causal-lm --price-per-1k-input 150
    --price-per-1k-output 600`."""
    with opened_platform() as p, p.db.session() as s:
        repo.expose_model(
            s,
            provider_id=name,
            upstream_model=model,
            name=local_name,
            task=task,
            price_per_1k_input=price_in,
            price_per_1k_output=price_out,
            licence_id=license,
            visibility="private" if private_to else "public",
            owner_tenant_id=private_to,
        )
        row = repo.get_provider(s, id=name)
        emit(
            _row(
                row, repo.exposed_models(s, provider_id=name), SecretSource(p.settings.provider_secrets_file)
            ),
            as_json=as_json,
        )


@providers.command("list")
def providers_list(as_json: JsonOpt = False) -> None:
    """List providers, their models and whether this machine can read their keys (never the keys)."""
    with opened_platform() as p, p.db.session() as s:
        secrets = SecretSource(p.settings.provider_secrets_file)
        rows = [_row(r, repo.exposed_models(s, provider_id=r.id), secrets) for r in repo.list_providers(s)]
        emit(
            rows,
            as_json=as_json,
            columns=["name", "base_url", "api_key_env", "key_present_here", "on_platform", "models"],
        )


@providers.command("show")
def providers_show(
    name: Annotated[str, typer.Argument(help="Provider name.")], as_json: JsonOpt = False
) -> None:
    """One provider in full."""
    with opened_platform() as p, p.db.session() as s:
        row = repo.get_provider(s, id=name)
        emit(
            _row(
                row, repo.exposed_models(s, provider_id=name), SecretSource(p.settings.provider_secrets_file)
            ),
            as_json=as_json,
        )


@providers.command("rm")
def providers_rm(name: Annotated[str, typer.Argument(help="Provider name.")]) -> None:
    """Remove a provider (remove its models first with `constellation models rm`)."""
    with opened_platform() as p, p.db.session() as s:
        repo.remove_provider(s, id=name)
    typer.echo(f"removed provider {name}")
