"""Loading, overriding, validating and serialising the typed, frozen configs (pydantic models).

The models (``harness/experiment.py``) are the one validator: types, ranges and cross-field rules. This module
reads YAML (floats as YAML 1.2 reads them), applies ``key=value`` overrides, and turns pydantic's
``ValidationError`` into one ``ConfigError`` line naming the file, the dotted key, the bad value and the fix::

    config/x.yaml: lofi.optim.lr = -0.1: must be > 0; set a positive learning rate

Derived quantities (shapes at a fidelity, schedules) are computed by pure functions from the config and never
written back into it.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from harness.errors import ConfigError

T = TypeVar("T", bound=BaseModel)

# YAML 1.2 (core schema) floats. PyYAML implements YAML 1.1, whose float pattern needs a dot and a signed
# exponent, so it reads `1e-4` and `1E5` as strings. Float config fields accept a string only when it matches this
# (Snakemake reads --configfile with a YAML 1.1 loader, and the Snakefile must read what `lofi` reads).
YAML12_FLOAT = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)


class Yaml12FloatLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose float resolver follows YAML 1.2: ``1e-4`` and ``1E5`` are floats."""


Yaml12FloatLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# Appended after the int resolver, so plain integers stay ints.
Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(f"^(?:{YAML12_FLOAT.pattern})$"), list("-+0123456789.")
)


def yaml_load(text: str) -> Any:
    """Parse YAML text with YAML 1.2 floats (what every config path uses)."""
    return yaml.load(text, Loader=Yaml12FloatLoader)


# ------------------------------------------------------------------------------------------------ error messages
def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, BaseModel):
        text = type(value).__name__ + "(...)"
    elif isinstance(value, Path):
        text = repr(str(value))
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the field at ``loc`` (None when ``loc`` goes through a non-model)."""
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        cls = sub
    return cls


_PROBLEMS: dict[str, tuple[str, str]] = {  # pydantic error type -> (problem, fix)
    "greater_than": ("must be > {gt}", "use a value above {gt}"),
    "greater_than_equal": ("must be >= {ge}", "use a value of at least {ge}"),
    "less_than": ("must be < {lt}", "use a value below {lt}"),
    "less_than_equal": ("must be <= {le}", "use a value of at most {le}"),
    "int_type": ("expected an integer", "write a whole number such as 2"),
    "int_from_float": ("expected an integer", "write a whole number such as 2"),
    "int_parsing": ("expected an integer", "write a whole number such as 2"),
    "float_type": ("expected a number", "write a number such as 0.1 or 1e-4"),
    "float_parsing": ("expected a number", "write a number such as 0.1 or 1e-4"),
    "finite_number": ("must be a finite number", "use a finite value"),
    "bool_type": ("expected true or false", "write true or false"),
    "string_type": ("expected a string", "write a string (quote it if YAML reads it as something else)"),
    "string_too_short": ("must not be empty", "give a non-empty value"),
    "string_pattern_mismatch": (
        "holds characters outside {pattern} (it becomes a file name and a command argument)",
        "use letters, digits and _ . + - only (paths: also / : @ = , ~)",
    ),
    "path_type": ("expected a path", "write a path string"),
    "tuple_type": ("expected a list", "write a list such as [1, 2]"),
    "too_short": ("has too few items", "give at least {min_length} item(s)"),
    "too_long": ("has too many items", "give at most {max_length} item(s)"),
    "missing": ("missing", "give a value"),
    "model_type": ("expected a mapping of keys to values", "write the section as `key: value` entries"),
    "model_attributes_type": ("expected a mapping of keys to values", "write the section as `key: value` entries"),
    "dict_type": ("expected a mapping of keys to values", "write the section as `key: value` entries"),
}


def _format_error(cls: type[BaseModel], err: Mapping[str, Any]) -> str:
    loc, kind, ctx = tuple(err.get("loc", ())), err.get("type", ""), dict(err.get("ctx") or {})
    value = err.get("input")
    if kind == "config_invalid":  # a model validator's error: ctx names the key below the model's location
        key = _dotted(loc + tuple(ctx["key"].split(".")))
        return f"{key} = {_show(ctx['value'])}: {ctx['problem']}; {ctx['fix']}"
    key = _dotted(loc)
    if kind == "extra_forbidden":
        owner = _model_at(cls, loc[:-1])
        known = list(owner.model_fields) if owner is not None else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        return f"{key} = {_show(value)}: unknown key '{loc[-1]}'; {hint}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        return f"{key} = {_show(value)}: not one of the allowed values; use one of {expected}"
    problem, fix = _PROBLEMS.get(kind, (str(err.get("msg", kind)), "see config/schema.json"))
    owner = _model_at(cls, loc[:-1])
    hints = getattr(owner, "fix_hints", {}) if owner is not None else {}
    leaf = loc[-1] if loc else ""
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal") and leaf in hints:
        fix = hints[leaf]
    if kind == "missing" and loc and isinstance(loc[-1], int):  # a fixed-length list (a range) too short
        key, value = _dotted(loc[:-1]), err.get("input")
        problem, fix = f"has no item {loc[-1]}", "give every item, e.g. [low, high] for a range"
    shown = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
    with contextlib.suppress(KeyError, IndexError):  # a message without those placeholders stays as it is
        problem, fix = problem.format(**shown), fix.format(**shown)
    return f"{key} = {_show(value)}: {problem}; {fix}"


def config_error(cls: type[BaseModel], exc: ValidationError, source: str) -> ConfigError:
    """One line: ``source: dotted.key = value: problem; fix`` for the first error, ``(+N more)`` for the rest."""
    errors = exc.errors(include_url=False)
    if not errors:
        return ConfigError(f"{source}: {exc}".replace("\n", " "))
    line = _format_error(cls, errors[0])
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return ConfigError(f"{source}: {line}{more}".replace("\n", " "))


# ------------------------------------------------------------------------------------------------ validation
def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "<config>") -> T:
    """Validate ``data`` into the frozen model ``cls``; errors are one ConfigError line starting with ``source``.

    A partial mapping for a nested section overrides only the keys it names, on top of that field's own default
    (``pretrain: {optim: {lr: 0.01}}`` keeps ``pretrain.optim``'s momentum 0.9).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values")
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise config_error(cls, exc, source) from None


def evolve(model: T, **changes: Any) -> T:
    """A validated copy of ``model`` with ``changes`` (``model_copy`` would not validate).

    A mapping given for a nested section updates that section's current value, and the whole copy is validated
    at once (errors name the full dotted key): ``evolve(cfg, lofi={"r_t": 2.0})`` equals
    ``evolve(cfg, lofi=evolve(cfg.lofi, r_t=2.0))``.
    """
    cls = type(model)
    try:
        return cls.model_validate(_updated(model, changes))
    except ValidationError as exc:
        raise config_error(cls, exc, f"evolve({cls.__name__})") from None


def _updated(model: BaseModel, changes: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {name: getattr(model, name) for name in type(model).model_fields}
    for name, value in changes.items():
        current = data.get(name)
        data[name] = (
            _updated(current, value) if isinstance(value, Mapping) and isinstance(current, BaseModel) else value
        )
    return data


# ------------------------------------------------------------------------------------------------ YAML, overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed YAML value, with YAML 1.2 floats)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. lofi.optim.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override '{text}': the value is not valid YAML; quote it") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied (validation happens in from_dict)."""
    out = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found; pass an existing YAML file (see config/)")
    try:
        data = yaml_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"{p}: not valid YAML{at}; fix the syntax") from None
    if data is None:  # an empty (or comments-only) file: a truncated copy or the wrong file, not "all defaults"
        raise ConfigError(
            f"{p}: the config file is empty; pass the intended file (e.g. config/default.yaml), or write {{}} in it "
            "to run every default on purpose"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
    return data


def load_config(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(cls, data, source=str(path))


# ------------------------------------------------------------------------------------------------ plain views
def to_dict(cfg: Any) -> Any:
    """A plain (YAML/JSON-serialisable) view of a config: nested dicts, Path -> str, tuples -> lists."""
    if isinstance(cfg, BaseModel):
        return _plain(cfg.model_dump(mode="python"))
    return _plain(cfg)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for MLflow params and tidy result rows."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
