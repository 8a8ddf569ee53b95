"""`constellation demo`: build the demo constellation (idempotent) and print demo keys with
copy-paste examples for curl and the `openai` client."""

from __future__ import annotations

from typing import Annotated

import typer

from constellation.cli._common import console, opened_platform
from constellation.config import Settings


def demo(
    quick: Annotated[
        bool, typer.Option("--quick", help="Reduced data and epochs (a smoke test, not the real demo).")
    ] = False,
) -> None:
    """Build the demo constellation: MiniLM with four fine-tuned classifiers, SmolLM2-135M-Instruct
    (imported from its GGUF file) with three chat adapters, contributors, terms and demo tenants.
    The first run takes several minutes on 2 cores; a second run trains nothing."""
    from constellation.finetune.demo import DemoBuilder, DemoOptions

    options = DemoOptions(max_examples=40, epochs=1) if quick else DemoOptions()
    with opened_platform() as platform:
        result = DemoBuilder(
            platform, options=options, say=lambda m: console.print(m, highlight=False)
        ).build()
    trained = ", ".join(result.trained) or "nothing (all cached)"
    console.print(f"[green]demo ready[/green]: trained {trained}")
    _examples(result.keys, Settings())


def _examples(keys: dict[str, str], settings: Settings) -> None:
    url = f"http://{settings.host}:{settings.port}"
    key = keys.get("demo", "")
    console.print(
        f"""
[bold]Dashboard[/bold]  {url}/      [bold]API docs[/bold]  {url}/docs
[bold]Demo keys[/bold] (stored in {settings.data_dir}/demo-keys.json)
  tenant demo (commercial):         {key}
  tenant demo-lab (non-commercial): {keys.get("demo-lab", "")}
  admin:                            {keys.get("admin", "")}
  statement of northwind-reviews:   {keys.get("northwind-reviews", "")}

[bold]Try it[/bold]
  export KEY={key}
  curl -s {url}/v1/classify -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
    -d '{{"model": "sentiment-v1", "input": ["The battery died after two days."]}}'
  curl -s {url}/v1/embeddings -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
    -d '{{"model": "minilm", "input": "hello world"}}'
  curl -s {url}/v1/workflows/support-triage/runs -H "Authorization: Bearer $KEY" \\
    -H 'Content-Type: application/json' -d '{{"inputs": {{"message": "The checkout page is down"}}}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key='{key}'); \\
print(c.chat.completions.create(model='pirate-v1', \\
  messages=[{{'role': 'user', 'content': 'Hello!'}}]).choices[0].message.content)"
""",
        highlight=False,
        soft_wrap=True,
    )
