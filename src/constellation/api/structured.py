"""Structured outputs on the generation routes: `response_format`, `tools` and `tool_choice`
become one engine `Constraint` (plus a system message that tells the model its tools), and the
constrained text becomes OpenAI's answer again: `content`, or `tool_calls`.

Tool calls by `tool_choice`: a named function constrains the output to that function's
arguments; `required` to `{"name": ..., "arguments": {...}}` for one of the tools; `auto` to
either free text that does not start with `{` or such a call; `none` leaves the output free."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from constellation.api.protocol.requests import NamedToolChoice, ResponseFormat, Tool, ToolChoice
from constellation.engine.decoder.structured import Constraint, check_size
from constellation.errors import InvalidInput

MAX_TOOLS = 64
Mode = Literal["content", "named", "required", "auto"]


@dataclass(frozen=True, slots=True)
class Structure:
    """How a request's output is constrained and read back."""

    constraint: Constraint | None
    mode: Mode = "content"
    function: str | None = None  # the named tool (mode "named")
    tools_prompt: str | None = None  # a system message describing the callable tools

    @property
    def calls_tools(self) -> bool:
        return self.mode != "content"


FREE = Structure(None)


def plan(
    response_format: ResponseFormat | None,
    tools: list[Tool] | None = None,
    tool_choice: ToolChoice | None = None,
) -> Structure:
    """The structure a request asks for; InvalidInput naming the field at fault."""
    fmt = _format_constraint(response_format)
    choice = tool_choice if tool_choice is not None else ("auto" if tools else "none")
    if not tools:
        if choice != "none":
            raise InvalidInput("tool_choice needs tools; send tools or drop tool_choice", param="tool_choice")
        return Structure(fmt)
    if choice == "none":
        return Structure(fmt)
    if fmt is not None:
        raise InvalidInput(
            "send either a JSON response_format or tools with a tool_choice other than 'none', not both",
            param="response_format",
        )
    schemas = _tool_schemas(tools)
    prompt = _tools_prompt(tools)
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in schemas:
            raise InvalidInput(
                f"tool_choice names function {name!r}, which is not in tools ({', '.join(schemas)}); "
                "name one of them",
                param="tool_choice",
            )
        return Structure(Constraint.json_schema(schemas[name], "tools"), "named", name, prompt)
    call = _call_schema(schemas)
    if choice == "required":
        return Structure(Constraint.json_schema(call, "tools"), "required", None, prompt)
    text = json.dumps(call, sort_keys=True, separators=(",", ":"))
    lark = f"start: TEXT | call\nTEXT: /[^{{](.|\\n)*/\ncall: %json {text}\n"
    return Structure(Constraint("lark", lark, "tools"), "auto", None, prompt)


def _format_constraint(fmt: ResponseFormat | None) -> Constraint | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Constraint.json_schema({"type": "object"}, "response_format")
    if fmt.json_schema is None:
        raise InvalidInput(
            "response_format of type json_schema needs json_schema: {name, schema}", param="response_format"
        )
    param = "response_format.json_schema.schema"
    schema = fmt.json_schema.schema_ or {"type": "object"}
    check_size(json.dumps(schema), param)
    _check_schema(schema, param)
    return Constraint.json_schema(schema, param)


def _check_schema(schema: dict[str, Any], param: str) -> None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "(top level)"
        raise InvalidInput(
            f"'{param}' is not a valid JSON Schema at {where}: {e.message[:200]}",
            param=param,
            code="invalid_schema",
        ) from None


def _tool_schemas(tools: list[Tool]) -> dict[str, dict[str, Any]]:
    if len(tools) > MAX_TOOLS:
        raise InvalidInput(f"send at most {MAX_TOOLS} tools", param="tools")
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        param = f"tools[{i}].function.parameters"
        f = tool.function
        if f.name in out:
            raise InvalidInput(f"tools name {f.name!r} twice; give each function its own name", param="tools")
        check_size(json.dumps(f.parameters), param)
        _check_schema(f.parameters, param)
        out[f.name] = f.parameters or {"type": "object"}
    check_size(json.dumps(out), "tools")
    return out


def _call_schema(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`{"name": ..., "arguments": ...}` for any one of the tools."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for name, params in schemas.items()
        ]
    }


def _tools_prompt(tools: list[Tool]) -> str:
    listed = [
        {
            "name": t.function.name,
            "description": t.function.description or "",
            "parameters": t.function.parameters,
        }
        for t in tools
    ]
    return (
        "You can call these tools:\n"
        + json.dumps(listed)
        + '\nTo call one, answer with only a JSON object: {"name": <tool name>, "arguments": {...}}.'
    )


def with_tools_prompt(messages: list[dict[str, Any]], structure: Structure) -> list[dict[str, Any]]:
    """`messages` with the tools described in the (first) system message."""
    if structure.tools_prompt is None:
        return messages
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{structure.tools_prompt}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": structure.tools_prompt}, *messages]


def tool_call(structure: Structure, text: str) -> dict[str, Any] | None:
    """The tool call in a finished output, in OpenAI's shape; None when the answer is text (or
    a call cut short by max_tokens that does not parse)."""
    if structure.mode == "named":
        return _call(structure.function or "", text)
    if structure.mode not in ("required", "auto") or not text.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    return _call(obj["name"], json.dumps(obj.get("arguments", {}), ensure_ascii=False))


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": "call_" + secrets.token_hex(12),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
