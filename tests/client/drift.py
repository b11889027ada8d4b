"""How the client's models and an OpenAPI schema's components differ: each difference in words.

Both sides are reduced to the same description of a type (``("ref", "Listing")``,
``("list", "str")``, ...) with whether each field is required and may be null, so that a field
added, removed or retyped on either side shows up as one line. This reads the models as Python
sees them (their annotations), not the generator's output, so a model edited by hand is
checked too.
"""

import types
import typing
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from pydantic import BaseModel

SCALARS = {
    ("string", None): "str",
    ("string", "uri"): "str",
    ("string", "date-time"): "datetime",
    ("string", "date"): "date",
    ("string", "decimal"): "decimal",
    ("integer", None): "int",
    ("integer", "int64"): "int",
    ("number", None): "float",
    ("boolean", None): "bool",
}
PYTHON_SCALARS = {str: "str", int: "int", datetime: "datetime", date: "date", Decimal: "decimal", bool: "bool",
                  float: "float"}  # fmt: skip


def _ref(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def schema_type(spec: dict) -> Any:
    if "$ref" in spec:
        return ("ref", _ref(spec["$ref"]))
    for combinator in ("allOf", "oneOf", "anyOf"):
        if combinator in spec:
            parts = sorted({schema_type(part) for part in spec[combinator]}, key=repr)
            return parts[0] if len(parts) == 1 else ("union", tuple(parts))
    kind = spec.get("type")
    if kind == "array":
        return ("list", schema_type(spec.get("items", {})))
    if kind == "object" or (kind is None and "properties" in spec):
        if spec.get("properties"):
            return ("object", schema_fields(spec))
        values = spec.get("additionalProperties")
        return ("dict", schema_type(values) if isinstance(values, dict) and values else "any")
    if kind is None:
        return "any"
    return SCALARS.get((kind, spec.get("format")), f"{kind}:{spec.get('format')}")


def schema_fields(component: dict) -> tuple:
    required = set(component.get("required", []))
    return tuple(
        sorted(
            (name, schema_type(spec), name in required, bool(spec.get("nullable")) and name in required)
            for name, spec in component.get("properties", {}).items()
        )
    )


def flatten(component: dict, components: dict) -> dict:
    """A component with ``allOf`` parents merged into one object."""
    if "allOf" not in component:
        return component
    merged: dict = {"properties": {}, "required": []}
    for part in component["allOf"]:
        part = flatten(components[_ref(part["$ref"])], components) if "$ref" in part else part
        merged["properties"].update(part.get("properties", {}))
        merged["required"] += part.get("required", [])
    return merged


def python_type(annotation: Any, components: set[str]) -> tuple[Any, bool]:
    """The description of an annotation, and whether it admits None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arguments = typing.get_args(annotation)
        nullable = type(None) in arguments
        parts = sorted({python_type(argument, components)[0] for argument in arguments if argument is not type(None)},
                       key=repr)  # fmt: skip
        return (parts[0] if len(parts) == 1 else ("union", tuple(parts))), nullable
    if origin is list:
        return ("list", python_type(typing.get_args(annotation)[0], components)[0]), False
    if origin is dict:
        value = typing.get_args(annotation)[1]
        return ("dict", "any" if value is Any else python_type(value, components)[0]), False
    if annotation is Any:
        return "any", False
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return ("ref", annotation.__name__), False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation.__name__ in components:
            return ("ref", annotation.__name__), False
        return ("object", model_fields(annotation, components)), False
    if annotation in PYTHON_SCALARS:
        return PYTHON_SCALARS[annotation], False
    return repr(annotation), False


def model_fields(model: type[BaseModel], components: set[str]) -> tuple:
    rows = []
    for attribute, info in model.model_fields.items():
        described, nullable = python_type(info.annotation, components)
        required = info.is_required()
        rows.append((info.alias or attribute, described, required, nullable and required))
    return tuple(sorted(rows))


def show(described: Any) -> str:
    if isinstance(described, str):
        return described
    kind, inner = described
    if kind == "ref":
        return inner
    if kind == "list":
        return f"list[{show(inner)}]"
    if kind == "dict":
        return f"dict[str, {show(inner)}]"
    if kind == "union":
        return " | ".join(show(part) for part in inner)
    return "{" + ", ".join(f"{name}: {show(value)}" for name, value, *_ in inner) + "}"


def object_fields(described: Any) -> tuple | None:
    """(whether a list, the fields) of an inline object or a list of them; None for anything else."""
    is_list = isinstance(described, tuple) and described[0] == "list"
    if is_list:
        described = described[1]
    if isinstance(described, tuple) and described[0] == "object":
        return is_list, described[1]
    return None


def compare_fields(where: str, served: tuple, modelled: tuple) -> list[str]:
    problems = []
    served_by_name = {row[0]: row for row in served}
    modelled_by_name = {row[0]: row for row in modelled}
    for name in sorted(served_by_name.keys() - modelled_by_name.keys()):
        problems.append(f"{where}.{name}: in the schema ({show(served_by_name[name][1])}), not in the client's model")
    for name in sorted(modelled_by_name.keys() - served_by_name.keys()):
        problems.append(f"{where}.{name}: in the client's model, no longer in the schema")
    for name in sorted(served_by_name.keys() & modelled_by_name.keys()):
        _, served_type, served_required, served_nullable = served_by_name[name]
        _, model_type, model_required, model_nullable = modelled_by_name[name]
        served_object, model_object = object_fields(served_type), object_fields(model_type)
        if served_object and model_object and served_object[0] == model_object[0]:
            problems += compare_fields(f"{where}.{name}[]", served_object[1], model_object[1])
        elif served_type != model_type:
            says = f"the schema says {show(served_type)}, the client's model {show(model_type)}"
            problems.append(f"{where}.{name}: {says}")
        if served_required != model_required:
            says = "required" if served_required else "optional"
            problems.append(f"{where}.{name}: {says} in the schema, not in the client's model")
        if served_nullable != model_nullable:
            says = "may be null" if served_nullable else "is never null"
            problems.append(f"{where}.{name}: {says} in the schema, not in the client's model")
    return problems


def drift(schema: dict, models: types.ModuleType) -> list[str]:
    """Every difference between the schema's components and the client's models."""
    components = schema["components"]["schemas"]
    names = set(components)
    problems = []
    for name in sorted(names):
        component = components[name]
        model = getattr(models, name, None)
        if model is None:
            problems.append(f"{name}: in the schema, no model in the client")
            continue
        if "enum" in component and "properties" not in component:
            if not (isinstance(model, type) and issubclass(model, Enum)):
                problems.append(f"{name}: an enum in the schema, not in the client")
                continue
            served, modelled = set(component["enum"]), {member.value for member in model}
            for value in sorted(served - modelled):
                problems.append(f"{name}: the schema's value {value!r} is not in the client's enum")
            for value in sorted(modelled - served):
                problems.append(f"{name}: the client's value {value!r} is no longer in the schema")
            continue
        if "oneOf" in component and "properties" not in component:  # one of several bodies
            served_members = {schema_type(part) for part in component["oneOf"]}
            modelled_members = {python_type(member, names)[0] for member in typing.get_args(model)}
            if served_members != modelled_members:
                problems.append(f"{name}: one of {sorted(map(show, served_members))} in the schema, "
                                f"of {sorted(map(show, modelled_members))} in the client")  # fmt: skip
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            problems.append(f"{name}: an object in the schema, not a model in the client")
            continue
        problems += compare_fields(name, schema_fields(flatten(component, components)), model_fields(model, names))
    defined = {
        name for name, value in vars(models).items()
        if isinstance(value, type) and value.__module__ == models.__name__
        and (issubclass(value, Enum) or (issubclass(value, BaseModel) and name != "ApiModel"))
    }  # fmt: skip
    inline = {name for name in defined - names if name.endswith("Item")}
    for name in sorted(defined - names - inline):
        problems.append(f"{name}: a model in the client, no longer in the schema")
    return problems
