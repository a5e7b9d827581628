"""The fields of a TRL / transformers config class, read from the installed package's source without importing it.

Importing any of those classes imports torch, which takes seconds; reading their source takes milliseconds, so a
misspelt `training_args` key is reported before anything heavy is loaded. Names the source does not define (enums
such as `IntervalStrategy`) become `object`, accepting any value: the class itself checks those when it is built
after validation. Where the source cannot be followed, the class is imported instead.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import importlib.util
import typing
from pathlib import Path
from typing import Any

from self_model.config.schema import field_types

# Classes a module imports from a package's lazy __init__, and the module that defines them.
DEFINED_IN = {("transformers", "TrainingArguments"): "transformers.training_args"}
TYPING_NAMES = {name: getattr(typing, name) for name in ("Any", "Literal", "Optional", "Union", "List", "Dict", "Tuple")}


def import_class(target: str) -> type:
    """The class named by `module:Class`."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def training_arg_types(target: str) -> dict[str, Any]:
    """`module:Class` -> {field name: annotation} of every field a user may set, the class's bases included."""
    module, _, name = target.partition(":")
    try:
        return dict(_fields_from_source(module, name))
    except (LookupError, OSError, SyntaxError):
        return field_types(import_class(target))


def _module_file(module: str) -> Path:
    """The source file of a module, found without importing it or its parent packages."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(module)
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise LookupError(module)


@functools.cache
def _parse(module: str) -> ast.Module:
    return ast.parse(_module_file(module).read_text(encoding="utf-8"))


def _imported_from(module: str, tree: ast.Module, name: str) -> str:
    """The module `name` comes from in `module`: defined there, or brought in by a `from ... import`."""
    if any(isinstance(node, ast.ClassDef) and node.name == name for node in tree.body):
        return module
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            source = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level]
                source = ".".join([*package, *([source] if source else [])])
            return DEFINED_IN.get((source, name), source)
    raise LookupError(f"{module}: where {name} comes from")


@functools.cache
def _fields_from_source(module: str, name: str) -> tuple[tuple[str, Any], ...]:
    tree = _parse(module)
    defined_in = _imported_from(module, tree, name)
    if defined_in != module:
        return _fields_from_source(defined_in, name)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    fields: dict[str, Any] = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id != "object":
            fields.update(_fields_from_source(_imported_from(module, tree, base.id), base.id))
        elif not isinstance(base, ast.Name):
            raise LookupError(f"{module}.{name}: base {ast.unparse(base)}")
    for statement in node.body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        field_name, annotation = statement.target.id, ast.unparse(statement.annotation)
        if field_name.startswith("_") or "ClassVar" in annotation or _not_init(statement.value):
            fields.pop(field_name, None)
            continue
        fields[field_name] = _annotation(annotation)
    return tuple(fields.items())


def _not_init(value: ast.expr | None) -> bool:
    """A `field(init=False, ...)` default."""
    return isinstance(value, ast.Call) and any(
        k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False for k in value.keywords
    )


class _UnknownIsObject(dict):
    def __missing__(self, key: str) -> Any:
        return getattr(builtins, key, object)


def _annotation(source: str) -> Any:
    """An annotation evaluated with typing's names; names defined elsewhere (enums, torch types) become object."""
    try:
        return eval(source, {"__builtins__": {}}, _UnknownIsObject(TYPING_NAMES))
    except Exception:  # an expression we cannot evaluate without the library: accept any value here
        return object
