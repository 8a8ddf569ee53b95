"""Values flow between steps through Jinja2 templates in its sandboxed environment (never
`eval`): compiled once at registration, where the steps and inputs they read are found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from constellation.errors import InvalidInput

# Names a template may read: the run's inputs, upstream steps' outputs, a map's current item,
# and a cascade tier's own output (in its `accept` check).
CONTEXT_NAMES = frozenset({"inputs", "steps", "item", "output"})
MAX_RENDERED_CHARS = 200_000  # a template that expands past this is refused, not rendered on


class _Env(SandboxedEnvironment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:  # a key wins over a method: `inputs.items`
            return obj[attribute]
        return super().getattr(obj, attribute)


_env = _Env(undefined=StrictUndefined, autoescape=False)


class TemplateFailed(InvalidInput):
    """A template that failed to render at run time (a missing field, a sandbox refusal)."""

    code = "workflow_template_error"


@dataclass(frozen=True, slots=True)
class Refs:
    steps: frozenset[str]
    inputs: frozenset[str]
    names: frozenset[str]  # every free name it reads


def _refs(ast: nodes.Template | nodes.Expr) -> Refs:
    steps: set[str] = set()
    inputs: set[str] = set()
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        base = getattr(node, "node", None)
        if not isinstance(base, nodes.Name) or base.name not in ("steps", "inputs"):
            continue
        if isinstance(node, nodes.Getattr):
            key: object = node.attr
        else:
            arg = getattr(node, "arg", None)
            key = arg.value if isinstance(arg, nodes.Const) else None
        if isinstance(key, str):
            (steps if base.name == "steps" else inputs).add(key)
    names = {n.name for n in ast.find_all(nodes.Name) if n.ctx == "load"}
    return Refs(frozenset(steps), frozenset(inputs), frozenset(names))


@dataclass(frozen=True, slots=True)
class Text:
    """A string field: a template when it has `{{`/`{%`, else a literal."""

    source: str
    refs: Refs
    _render: Any = None  # the compiled template, None for a literal

    def render(self, ctx: dict[str, Any], *, where: str) -> str:
        if self._render is None:
            return self.source
        return _guard(lambda: self._render.render(ctx), where)


@dataclass(frozen=True, slots=True)
class Expr:
    """An expression field (`steps.intent.label`, `inputs.items`): evaluates to a Python value."""

    source: str
    refs: Refs
    _eval: Any

    def evaluate(self, ctx: dict[str, Any], *, where: str) -> Any:
        return _guard(lambda: self._eval(**ctx), where)


def _guard(fn: Any, where: str) -> Any:
    try:
        out = fn()
    except (UndefinedError, SecurityError, TemplateError, TypeError, ValueError, ArithmeticError) as e:
        raise TemplateFailed(f"{where}: the template failed at run time: {e}", param=where) from None
    if isinstance(out, str) and len(out) > MAX_RENDERED_CHARS:
        raise TemplateFailed(
            f"{where}: the template rendered {len(out):,} characters, over {MAX_RENDERED_CHARS:,}",
            param=where,
        )
    return out


def _check_names(refs: Refs, where: str, allowed: frozenset[str]) -> None:
    unknown = sorted(refs.names - allowed)
    if unknown:
        raise InvalidInput(
            f"{where}: the template reads {', '.join(map(repr, unknown))}; templates may read only "
            f"{', '.join(sorted(allowed))} (e.g. {{{{ inputs.message }}}} or {{{{ steps.intent.label }}}})",
            param=where,
        )


def text(source: str, *, where: str, allowed: frozenset[str] = CONTEXT_NAMES) -> Text:
    """Compile a string field (InvalidInput naming `where` on a syntax error or unknown name)."""
    if "{{" not in source and "{%" not in source:
        return Text(source, Refs(frozenset(), frozenset(), frozenset()))
    try:
        ast = _env.parse(source)
        compiled = _env.from_string(ast)
    except TemplateError as e:
        raise InvalidInput(f"{where}: the template does not compile: {e}", param=where) from None
    refs = _refs(ast)
    _check_names(refs, where, allowed)
    return Text(source, refs, compiled)


def expr(source: str, *, where: str, allowed: frozenset[str] = CONTEXT_NAMES) -> Expr:
    """Compile an expression field; `{{ ... }}` around it is accepted and stripped."""
    body = source.strip()
    if body.startswith("{{") and body.endswith("}}"):
        body = body[2:-2].strip()
    try:
        ast = _env.parse(f"{{{{ {body} }}}}")
        compiled = _env.compile_expression(body, undefined_to_none=False)
    except TemplateError as e:
        raise InvalidInput(f"{where}: the expression does not compile: {e}", param=where) from None
    refs = _refs(ast)
    _check_names(refs, where, allowed)
    return Expr(source, refs, compiled)


def tree(value: Any, *, where: str, allowed: frozenset[str] = CONTEXT_NAMES) -> Any:
    """Every string inside a JSON-like value compiled as a `Text` (lists and dicts kept)."""
    if isinstance(value, str):
        return text(value, where=where, allowed=allowed)
    if isinstance(value, list):
        return [tree(v, where=f"{where}[{i}]", allowed=allowed) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: tree(v, where=f"{where}.{k}", allowed=allowed) for k, v in value.items()}
    return value


def render_tree(value: Any, ctx: dict[str, Any], *, where: str) -> Any:
    if isinstance(value, Text):
        return value.render(ctx, where=where)
    if isinstance(value, list):
        return [render_tree(v, ctx, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: render_tree(v, ctx, where=f"{where}.{k}") for k, v in value.items()}
    return value


def tree_refs(value: Any) -> list[Refs]:
    if isinstance(value, Text | Expr):
        return [value.refs]
    if isinstance(value, list):
        return [r for v in value for r in tree_refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in tree_refs(v)]
    return []
