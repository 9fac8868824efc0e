"""A JSON Schema (draft 2020-12) generated from the ``ExperimentConfig`` dataclasses.

The dataclasses stay the single source of truth; ``config/schema.json`` is this module's output, committed so that
the Snakefile (``snakemake.utils.validate``), editors and other tools can check a config without importing the
package. A test compares the committed file with a fresh ``lofi config schema`` so it cannot go stale.

Every object is closed (``additionalProperties: false``). Defaults are inlined per field from the *field's*
default instance, not from the nested class: ``pretrain.optim`` defaults to lr 0.05 although ``OptimConfig()``
says 0.1, and a validator that fills in defaults (Snakemake's does) must fill in what ``from_dict`` would use.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from harness.config import to_dict

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Constraints the dataclasses check in __post_init__ (the schema states them too, for tools without Python).
_EXTRA: dict[tuple[str, str], dict[str, Any]] = {
    ("FidelityConfig", "snippets"): {"minimum": 1},
    ("FidelityConfig", "frames"): {"minimum": 1},
    ("FidelityConfig", "stride"): {"minimum": 1},
    ("FidelityConfig", "size"): {"minimum": 1},
}


def type_schema(tp: Any, default: Any = dataclasses.MISSING) -> dict[str, Any]:
    """The schema of one annotation; ``default`` (a value of that type) is used for nested dataclasses."""
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        nullable = len(args) < len(get_args(tp))
        options = [type_schema(a) for a in args] + ([{"type": "null"}] if nullable else [])
        simple = [o.get("type") for o in options]
        if all(isinstance(t, str) and set(o) == {"type"} for t, o in zip(simple, options)):
            return {"type": simple}
        return {"anyOf": options}
    if origin is typing.Literal:
        return {"enum": list(get_args(tp))}
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp, default if dataclasses.is_dataclass(default) else None)
    if origin in (tuple, list):
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return {"type": "array", "prefixItems": [type_schema(a) for a in args], "items": False,
                    "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", "items": type_schema(args[0]) if args else {}}
    if origin is dict:
        _, vt = get_args(tp) or (Any, Any)
        return {"type": "object", "additionalProperties": type_schema(vt)}
    simple = {float: "number", int: "integer", bool: "boolean", str: "string", Path: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no JSON schema for config type {tp!r}")


def dataclass_schema(cls: type, instance: Any | None = None) -> dict[str, Any]:
    """A closed object schema for ``cls`` whose property defaults come from ``instance`` (default: ``cls()``)."""
    hints = get_type_hints(cls)
    if instance is None:
        instance = cls()
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        sub = type_schema(hints[f.name], value)
        sub.update(_EXTRA.get((cls.__name__, f.name), {}))
        sub["default"] = to_dict(value)
        props[f.name] = sub
    out: dict[str, Any] = {"type": "object", "title": cls.__name__}
    doc = (cls.__doc__ or "").strip()
    if doc and not doc.startswith(f"{cls.__name__}("):  # dataclasses invent a signature docstring
        out["description"] = " ".join(doc.split())
    out.update({"properties": props, "additionalProperties": False})
    return out


def experiment_schema() -> dict[str, Any]:
    from harness.experiment import ExperimentConfig

    schema = {"$schema": SCHEMA_DIALECT, **dataclass_schema(ExperimentConfig)}
    schema["description"] = ("lofi-bench experiment config (generated from harness/experiment.py by "
                             "`lofi config schema`; do not edit by hand)")
    return schema


def schema_text() -> str:
    """The exact text of config/schema.json."""
    return json.dumps(experiment_schema(), indent=2) + "\n"
