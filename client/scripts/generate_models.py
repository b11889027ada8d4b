"""Write ``gpubroker/models.py`` from the API's OpenAPI schema: one pydantic model per component
(enums as ``StrEnum``), the request bodies included.

    python client/scripts/generate_models.py SCHEMA   # a file (JSON or YAML) or an http(s) URL

The schema of a checkout: ``manage.py spectacular --format openapi-json --file schema.json``.
The suite's drift test fails when the served schema and these models part ways; run this
script and commit the result.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
import textwrap
from pathlib import Path

from pydantic import BaseModel

TARGET = Path(__file__).resolve().parent.parent / "src" / "gpubroker" / "models.py"
SCALARS = {
    ("string", None): "str",
    ("string", "uri"): "str",
    ("string", "date-time"): "datetime",
    ("string", "date"): "date",
    ("string", "decimal"): "Decimal",
    ("integer", None): "int",
    ("integer", "int64"): "int",
    ("number", None): "float",
    ("boolean", None): "bool",
}
ENUM_CHOICES = re.compile(r"\n\n\* `.*", re.DOTALL)  # drf-spectacular's list of an enum's values


def load(source: str) -> dict:
    if source.startswith(("http://", "https://")):
        import httpx

        response = httpx.get(source, headers={"Accept": "application/vnd.oai.openapi+json"}, timeout=30)
        response.raise_for_status()
        return response.json()
    text = Path(source).read_text()
    if text.lstrip().startswith("{"):
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def is_enum(component: dict) -> bool:
    return "enum" in component and "properties" not in component


def is_union(component: dict) -> bool:
    return "oneOf" in component and "properties" not in component


def member_name(value: str) -> str:
    name = re.sub(r"[^0-9A-Za-z]+", "_", value).strip("_").upper()
    return name or "NOT_SET"


def attribute_name(name: str) -> str:
    return f"{name}_" if keyword.iskeyword(name) or hasattr(BaseModel, name) else name


def camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]", name) if part)


class Generator:
    def __init__(self, components: dict):
        self.components = components
        self.inline: dict[str, dict] = {}  # models for objects declared inside a component

    def type_of(self, spec: dict, owner: str, field: str) -> str:
        """The Python annotation of a property's schema (without its nullability)."""
        if "$ref" in spec:
            return ref_name(spec["$ref"])
        for combinator in ("allOf", "oneOf", "anyOf"):
            if combinator in spec:
                return " | ".join(self.type_of(part, owner, field) for part in spec[combinator])
        kind = spec.get("type")
        if kind == "array":
            return f"list[{self.type_of(spec.get('items', {}), owner, field)}]"
        if kind == "object" or (kind is None and "properties" in spec):
            if spec.get("properties"):
                name = f"{owner}{camel(field)}Item"
                self.inline[name] = spec
                return name
            values = spec.get("additionalProperties")
            if isinstance(values, dict) and values:
                return f"dict[str, {self.type_of(values, owner, field)}]"
            return "dict[str, Any]"
        if kind is None:
            return "Any"
        return SCALARS[(kind, spec.get("format"))]

    def references(self, component: dict) -> set[str]:
        found = set()

        def walk(node):
            if isinstance(node, dict):
                if "$ref" in node:
                    found.add(ref_name(node["$ref"]))
                for key, value in node.items():
                    if key != "example":
                        walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(component)
        return found

    def ordered(self) -> list[str]:
        """Component names, each after those it refers to."""
        done: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            for dependency in sorted(self.references(self.components[name])):
                visit(dependency)
            done.append(name)

        for name in sorted(self.components):
            visit(name)
        return done

    def enum_source(self, name: str, component: dict) -> str:
        lines = [f"class {name}(StrEnum):"]
        description = component.get("description")
        if description:
            lines.append(f"    {docstring(description)}")
            lines.append("")
        for value in component["enum"]:
            lines.append(f"    {member_name(value)} = {value!r}")
        return "\n".join(lines)

    def model_source(self, name: str, component: dict) -> str:
        base, description = "ApiModel", component.get("description")
        if "allOf" in component:
            parents = [part for part in component["allOf"] if "$ref" in part]
            own = [part for part in component["allOf"] if "$ref" not in part]
            base = ", ".join(ref_name(part["$ref"]) for part in parents)
            component = own[0] if own else {"properties": {}}
        lines = [f"class {name}({base}):"]
        if description:
            lines.append(f"    {docstring(description)}")
            lines.append("")
        required = set(component.get("required", []))
        properties = component.get("properties", {})
        for field, spec in properties.items():
            annotation = self.type_of(spec, name, field)
            nullable = spec.get("nullable", False)
            arguments = []
            attribute = attribute_name(field)
            if attribute != field:
                arguments.append(f"alias={field!r}")
            text = (spec.get("description") or "").strip()
            text = ENUM_CHOICES.sub("", text).strip()
            if text:
                arguments.append(f"description={text!r}")
            if field in required:
                if nullable:
                    annotation += " | None"
            else:
                annotation += " | None"
                arguments.insert(0, "default=None")
            value = f" = Field({', '.join(arguments)})" if arguments else ""
            lines.append(f"    {attribute}: {annotation}{value}")
        if not properties:
            lines.append("    pass")
        return "\n".join(lines)

    def source(self) -> str:
        blocks = []
        for name in self.ordered():
            component = self.components[name]
            if is_enum(component):
                blocks.append(self.enum_source(name, component))
                continue
            if is_union(component):  # one of several bodies: a type alias
                members = " | ".join(self.type_of(part, name, "") for part in component["oneOf"])
                blocks.append(f"{name} = {members}")
                continue
            model = self.model_source(name, component)
            while self.inline:  # an inline object's model goes before the model that holds it
                inline_name, spec = self.inline.popitem()
                blocks.append(self.model_source(inline_name, spec))
            blocks.append(model)
        header = textwrap.dedent(
            '''\
            """The API's resources and request bodies as typed models.

            Generated from the OpenAPI schema by ``scripts/generate_models.py``: do not edit by hand.
            """

            # ruff: noqa: E501 (the schema's descriptions, kept whole)

            from __future__ import annotations

            from datetime import date, datetime
            from decimal import Decimal
            from enum import StrEnum
            from typing import Any

            from pydantic import BaseModel, ConfigDict, Field


            class ApiModel(BaseModel):
                """A resource or request of the API. Fields the API adds later are kept, not refused."""

                model_config = ConfigDict(extra="allow", populate_by_name=True)
            '''
        )
        return header + "\n\n" + "\n\n\n".join(blocks) + "\n"


def docstring(text: str) -> str:
    text = ENUM_CHOICES.sub("", text).strip().replace("\\", "\\\\").replace('"""', "'''")
    first = text.split("\n\n")[0].replace("\n", " ")
    return f'"""{first}"""'


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    schema = load(sys.argv[1])
    TARGET.write_text(Generator(schema["components"]["schemas"]).source())
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
