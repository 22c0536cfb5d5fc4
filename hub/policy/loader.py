"""Load YAML files or directories into one validated :class:`Bundle`.

Everything wrong is collected (syntax, types, unknown keys, cross-resource
references) and raised as one :class:`PolicyError`; nothing is returned
unless the whole bundle is valid.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ValidationError

from hub.policy.bundle import Bundle, Located
from hub.policy.errors import PathPart, PolicyError, Problem
from hub.policy.schema import API_VERSION, KINDS, RESOURCE_TYPES
from hub.policy.validate import cross_validate
from hub.policy.vocab import did_you_mean
from hub.policy.yamlsrc import Document, parse_text, read_documents


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated / Optional / unions down to one model or container."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
            continue
        return annotation


def _fields_at(model: type[BaseModel], loc: tuple[PathPart, ...]) -> Optional[list[str]]:
    """The YAML keys allowed at ``loc`` inside ``model`` (None if unknown)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            match = None
            for name, info in current.model_fields.items():
                if part in (info.alias, name):
                    match = info.annotation
                    break
            if match is None:
                return None
            current = match
        elif origin in (list, tuple):
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return None


_LITERAL_RE = re.compile(r"'([^']*)'")


def _message(error: dict[str, Any], model: type[BaseModel], loc: tuple[PathPart, ...]) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1]) or []
        hint = did_you_mean(loc[-1], allowed) if allowed else ""
        if not hint and allowed:
            hint = f" (allowed: {', '.join(allowed)})"
        return f"unknown field {loc[-1]!r}{hint}"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        expected = _LITERAL_RE.findall(str((error.get("ctx") or {}).get("expected", "")))
        return f"{value!r} is not one of {', '.join(expected)}{did_you_mean(value, expected)}"
    if kind == "string_pattern_mismatch":
        return f"{value!r} is not a valid name: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{msg}, got {type(value).__name__} {value!r}"[:300]
    return msg


def _resource_from(doc: Document, problems: list[Problem]) -> Optional[Located]:
    data = doc.data
    if not isinstance(data, dict):
        problems.append(doc.problem((), f"a document must be a mapping with apiVersion, kind, metadata, spec; got {type(data).__name__}"))
        return None
    kind = data.get("kind")
    if kind is None:
        problems.append(doc.problem((), f"missing 'kind' (one of {', '.join(KINDS)})"))
        return None
    if not isinstance(kind, str) or kind not in RESOURCE_TYPES:
        problems.append(doc.problem(("kind",), f"{kind!r} is not a known kind{did_you_mean(kind, KINDS) or ' (one of ' + ', '.join(KINDS) + ')'}"))
        return None
    model = RESOURCE_TYPES[kind]
    try:
        resource = model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            loc = tuple(p for p in error["loc"] if p != "[key]")
            problems.append(doc.problem(loc, _message(error, model, loc)))
        return None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a validator raised oddly
        problems.append(doc.problem((), f"invalid {kind}: {exc}"))
        return None
    return Located(resource=resource, document=doc)


def _identity(doc: Document) -> Optional[tuple[str, str, Optional[str]]]:
    """(kind, name, dataClass) read leniently from a document that failed validation."""
    data = doc.data if isinstance(doc.data, dict) else {}
    meta = data.get("metadata")
    spec = data.get("spec")
    name = meta.get("name") if isinstance(meta, dict) else None
    data_class = spec.get("dataClass") if isinstance(spec, dict) else None
    kind = data.get("kind")
    if isinstance(kind, str) and isinstance(name, str):
        return kind, name, data_class if isinstance(data_class, str) else None
    return None


def _build(documents: list[Document], problems: list[Problem]) -> Bundle:
    located = []
    broken: set[tuple[str, str]] = set()
    broken_classes: set[str] = set()
    for doc in documents:
        item = _resource_from(doc, problems)
        if item is not None:
            located.append(item)
            continue
        identity = _identity(doc)
        if identity is not None:
            broken.add(identity[:2])
            if identity[0] == "ResidencyPolicy" and identity[2]:
                broken_classes.add(identity[2])
    bundle = Bundle.from_located(located, problems)
    # References to documents that failed on their own are not reported again.
    problems.extend(cross_validate(bundle, broken, broken_classes))
    return bundle


def _nothing(where: str) -> Problem:
    # As `kubectl apply`: an empty input is a mistake (a wrong path, a truncated file), not a request
    # to publish nothing.
    return Problem(where, 0, "", "no objects passed to apply: the input holds no YAML documents; "
                                 "check the path (-f FILE or DIR with .yaml files)")


def load_bundle(paths: Iterable[str | Path]) -> Bundle:
    """Load and validate every document under ``paths`` (files or directories).

    Returns the valid :class:`Bundle`, or raises one :class:`PolicyError`
    listing every problem (file, line, path, message). Never partial.
    """
    problems: list[Problem] = []
    paths = list(paths)
    documents = read_documents(paths, problems)
    if not documents and not problems:
        problems.append(_nothing(", ".join(str(p) for p in paths)))
    bundle = _build(documents, problems)
    if problems:
        raise PolicyError(problems)
    return bundle


def load_bundle_text(text: str, file: str = "<input>") -> Bundle:
    """Like :func:`load_bundle` for YAML text already in memory (one or many documents)."""
    problems: list[Problem] = []
    documents = parse_text(text, file, problems)
    if not documents and not problems:
        problems.append(_nothing(file))
    bundle = _build(documents, problems)
    if problems:
        raise PolicyError(problems)
    return bundle


__all__ = ["load_bundle", "load_bundle_text", "API_VERSION"]
