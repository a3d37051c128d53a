"""Request bodies must have the JSON types their published schema names.

Pydantic's lax mode would take `{"seed": "5"}` or `{"seed": false}` as seed 5
or 0, and `{"prefetch": 1}` as true: bodies the OpenAPI schema documents as
invalid, accepted anyway. Strict mode is no way out: it refuses a JSON array
for a tuple field (`ae_channels`, `lr_schedule`), which the schema allows. So
the body is first checked against the model's own JSON schema, for types only
(bounds, enums and cross-field rules stay with the model), and a mismatch is a
422 located at the field, like any other validation error.

    config: Annotated[RunConfig, json_typed(RunConfig)]
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, BeforeValidator, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Schema = dict[str, Any]
Loc = tuple[str | int, ...]

JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    # JSON has one number type: 416.0 is an integer to JSON Schema (and to pydantic's int)
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def json_typed(model: type[BaseModel]) -> BeforeValidator:
    """A validator (for `Annotated`) that refuses input whose JSON types differ from `model`'s schema."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})

    def check(value: Any) -> Any:
        errors = type_errors(schema, value, (), defs)
        if errors:
            raise ValidationError.from_exception_data(model.__name__, errors)
        return value

    return BeforeValidator(check)


def type_errors(schema: Schema, value: Any, loc: Loc, defs: dict[str, Schema]) -> list[InitErrorDetails]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in schema:  # Optional[X]: X or null
        branches = [type_errors(s, value, loc, defs) for s in schema["anyOf"]]
        if any(not found for found in branches):
            return []
        typed = [found for s, found in zip(schema["anyOf"], branches) if _matches(s, value, defs)]
        return typed[0] if typed else [_mismatch(loc, value, " or ".join(_names(s, defs) for s in schema["anyOf"]))]
    if not _matches(schema, value, defs):
        return [_mismatch(loc, value, _names(schema, defs))]
    errors: list[InitErrorDetails] = []
    if isinstance(value, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:  # an undeclared key is the model's to refuse (extra="forbid") or ignore
                errors += type_errors(sub, item, (*loc, key), defs)
    elif isinstance(value, list):
        prefix, items = schema.get("prefixItems", []), schema.get("items")
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else items if isinstance(items, dict) else None
            if sub is not None:
                errors += type_errors(sub, item, (*loc, i), defs)
    return errors


def _matches(schema: Schema, value: Any, defs: dict[str, Schema]) -> bool:
    if "$ref" in schema:
        return _matches(defs[schema["$ref"].rsplit("/", 1)[-1]], value, defs)
    kind = schema.get("type")
    return kind is None or JSON_TYPES[kind](value)


def _names(schema: Schema, defs: dict[str, Schema]) -> str:
    if "$ref" in schema:
        return _names(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    return schema.get("type", "any value")


def _mismatch(loc: Loc, value: Any, expected: str) -> InitErrorDetails:
    got = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return InitErrorDetails(type=PydanticCustomError("json_type", "Input should be a JSON {expected}, not {got}",
                                                     {"expected": expected, "got": got.get(type(value), "null")}),
                            loc=loc, input=value)
