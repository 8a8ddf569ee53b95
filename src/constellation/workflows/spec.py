"""A workflow document (YAML or JSON) parsed into typed steps with compiled templates; every
error is an InvalidInput naming the step and the field (`steps.<name>.<field>`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from constellation.errors import InvalidInput
from constellation.workflows.steps import STEP_NAME, Step, only, parse_step

INPUT_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "number": (int, float),
    "integer": int,
    "boolean": bool,
    "array": list,
    "object": dict,
}
MAX_DOCUMENT_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class InputDecl:
    name: str
    type: str
    required: bool = True
    default: Any = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Spec:
    description: str
    inputs: dict[str, InputDecl]
    steps: dict[str, Step]  # in document order
    output: str
    fee_per_run_nanos: int = 0


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans: only true/false, so a switch's `on:` stays a key and a case `no:` a text."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_document(text: str | bytes) -> dict[str, Any]:
    """A YAML (or JSON, which YAML reads too) document as a mapping."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise InvalidInput(
            f"the workflow document is over {MAX_DOCUMENT_BYTES // 1024} KiB", param="document"
        )
    try:
        doc = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as e:
        raise InvalidInput(
            f"the workflow document is not valid YAML or JSON: {e}", param="document"
        ) from None
    if not isinstance(doc, dict):
        raise InvalidInput("a workflow document is a mapping with 'inputs' and 'steps'", param="document")
    return doc


def parse(doc: dict[str, Any]) -> Spec:
    """The document as a `Spec`; structural errors only (the graph and the registry are checked
    by `graph.check` and `validate`)."""
    only(doc, ("description", "inputs", "steps", "output", "terms"), where="document")
    inputs = _inputs(doc.get("inputs") or {})
    raw = doc.get("steps")
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("'steps' must be a non-empty list of steps", param="steps")
    steps: dict[str, Step] = {}
    for i, body in enumerate(raw):
        step = parse_step(body, i, set(inputs))
        if step.name in steps:
            raise InvalidInput(
                f"steps.{step.name}: two steps are named '{step.name}'; rename one",
                param=f"steps.{step.name}.name",
            )
        steps[step.name] = step
    output = doc.get("output", list(steps)[-1])
    if output not in steps:
        raise InvalidInput(
            f"output: no step named {output!r}; name one of {', '.join(steps)}", param="output"
        )
    terms = doc.get("terms") or {}
    only(terms, ("per_run_nanos",), where="terms")
    fee = terms.get("per_run_nanos", 0)
    if not isinstance(fee, int) or isinstance(fee, bool) or not 0 <= fee <= 10**12:
        raise InvalidInput(
            "terms.per_run_nanos: a whole number of nano-USD, 0 to 1e12", param="terms.per_run_nanos"
        )
    return Spec(str(doc.get("description") or ""), inputs, steps, output, fee)


def _inputs(raw: Any) -> dict[str, InputDecl]:
    if not isinstance(raw, dict):
        raise InvalidInput(
            "'inputs' maps each input's name to its type, e.g. {message: string}", param="inputs"
        )
    out = {}
    for name, decl in raw.items():
        where = f"inputs.{name}"
        if not isinstance(name, str) or not STEP_NAME.fullmatch(name):
            raise InvalidInput(f"{where}: input names are lowercase letters, digits and _", param=where)
        body = {"type": decl} if isinstance(decl, str) else decl
        only(body, ("type", "default", "description"), where=where)
        kind = body.get("type", "string")
        if kind not in INPUT_TYPES:
            raise InvalidInput(
                f"{where}.type: {kind!r} is not one of {', '.join(INPUT_TYPES)}", param=f"{where}.type"
            )
        out[name] = InputDecl(
            name, kind, "default" not in body, body.get("default"), str(body.get("description", ""))
        )
    return out


def check_inputs(spec: Spec, given: Any) -> dict[str, Any]:
    """A run's inputs against the declared ones (defaults filled); InvalidInput naming the input."""
    if not isinstance(given, dict):
        raise InvalidInput("'inputs' must be a mapping of the workflow's declared inputs", param="inputs")
    unknown = sorted(set(given) - set(spec.inputs))
    if unknown:
        raise InvalidInput(
            f"inputs.{unknown[0]}: the workflow declares no such input; it takes "
            f"{', '.join(spec.inputs) or 'none'}",
            param=f"inputs.{unknown[0]}",
        )
    out = {}
    for name, decl in spec.inputs.items():
        if name not in given:
            if decl.required:
                raise InvalidInput(f"inputs.{name}: required ({decl.type})", param=f"inputs.{name}")
            out[name] = decl.default
            continue
        value = given[name]
        want = INPUT_TYPES[decl.type]
        if not isinstance(value, want) or (isinstance(value, bool) and decl.type != "boolean"):
            raise InvalidInput(
                f"inputs.{name}: expected {decl.type}, got {type(value).__name__}", param=f"inputs.{name}"
            )
        out[name] = value
    return out
