"""A validated set of resources, its canonical JSON, and diffs between two.

The canonical JSON (sorted keys, resources ordered by kind then name,
quantities written in canonical units) is what the store keeps per
revision; its SHA-256 is the bundle's digest. ``Bundle.from_json`` reads it
back through the same validation as YAML.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from hub.policy.errors import PathPart, PolicyError, Problem, format_path
from hub.policy.schema import (
    KINDS,
    RESOURCE_TYPES,
    Model,
    PriorityClass,
    ResidencyPolicy,
    Resource,
    Service,
    Site,
)
from hub.policy.yamlsrc import Document


@dataclass(frozen=True)
class Located:
    """A resource and the document it came from (None for JSON/in-memory)."""

    resource: Resource
    document: Optional[Document] = None


@dataclass
class Bundle:
    """A validated, complete set of fleet resources keyed by kind and name."""

    sites: dict[str, Site] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    residency_policies: dict[str, ResidencyPolicy] = field(default_factory=dict)
    priority_classes: dict[str, PriorityClass] = field(default_factory=dict)
    documents: dict[tuple[str, str], Document] = field(default_factory=dict, repr=False, compare=False)

    _BY_KIND = {
        "Site": "sites",
        "Model": "models",
        "Service": "services",
        "ResidencyPolicy": "residency_policies",
        "PriorityClass": "priority_classes",
    }

    # ------------------------------------------------------------ building

    @classmethod
    def from_located(cls, located: Iterable[Located], problems: list[Problem]) -> "Bundle":
        bundle = cls()
        for item in located:
            res = item.resource
            table = bundle.of_kind(res.kind)
            if res.name in table:
                first = bundle.documents.get((res.kind, res.name))
                where = f" (first defined at {first.file}:{first.line_of(('metadata', 'name'))})" if first else ""
                problems.append(bundle._problem_in(item.document, ("metadata", "name"), f"duplicate {res.kind} name {res.name!r}{where}"))
                continue
            table[res.name] = res
            if item.document is not None:
                bundle.documents[(res.kind, res.name)] = item.document
        return bundle

    @staticmethod
    def _problem_in(doc: Optional[Document], path: tuple[PathPart, ...], message: str) -> Problem:
        if doc is None:
            return Problem("<bundle>", 0, format_path(path), message)
        return doc.problem(path, message)

    def problem(self, kind: str, name: str, path: tuple[PathPart, ...], message: str) -> Problem:
        """A problem located at ``path`` inside resource (kind, name)."""
        return self._problem_in(self.documents.get((kind, name)), path, message)

    def of_kind(self, kind: str) -> dict[str, Any]:
        return getattr(self, self._BY_KIND[kind])

    def resources(self) -> list[Resource]:
        """All resources, ordered by kind (in KINDS order) then name."""
        return [self.of_kind(k)[n] for k in KINDS for n in sorted(self.of_kind(k))]

    # ----------------------------------------------------------- canonical

    def to_canonical(self) -> list[dict[str, Any]]:
        return [r.model_dump(mode="json", by_alias=True) for r in self.resources()]

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, stable across loads."""
        return json.dumps(self.to_canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> "Bundle":
        """Read canonical JSON back (validated; raises PolicyError)."""
        from hub.policy.validate import cross_validate

        problems: list[Problem] = []
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise PolicyError([Problem("<bundle>", 0, "", f"not JSON: {exc}")]) from None
        if not isinstance(items, list):
            raise PolicyError([Problem("<bundle>", 0, "", "canonical bundle JSON must be a list of resources")])
        located = []
        for index, item in enumerate(items):
            kind = item.get("kind") if isinstance(item, dict) else None
            if not isinstance(kind, str) or kind not in RESOURCE_TYPES:
                problems.append(Problem("<bundle>", 0, f"[{index}]", f"unknown kind {kind!r}"))
                continue
            try:
                located.append(Located(RESOURCE_TYPES[kind].model_validate(item)))
            except ValueError as exc:
                problems.append(Problem("<bundle>", 0, f"[{index}]", str(exc).replace("\n", " ")))
        bundle = cls.from_located(located, problems)
        problems.extend(cross_validate(bundle))
        if problems:
            raise PolicyError(problems)
        return bundle


# ----------------------------------------------------------------- diff


@dataclass(frozen=True)
class FieldChange:
    path: str
    before: Any
    after: Any


@dataclass(frozen=True)
class ResourceChange:
    kind: str
    name: str
    change: str
    """'added', 'removed' or 'changed'."""
    fields: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class BundleDiff:
    changes: tuple[ResourceChange, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    def lines(self) -> list[str]:
        """Human-readable lines: ``+ Site/fra-1``, ``~ Service/chat spec.slo.ttftP95: '500ms' -> '400ms'``."""
        out = []
        sign = {"added": "+", "removed": "-", "changed": "~"}
        for c in self.changes:
            if c.change != "changed":
                out.append(f"{sign[c.change]} {c.kind}/{c.name}")
            for f in c.fields:
                out.append(f"~ {c.kind}/{c.name} {f.path}: {f.before!r} -> {f.after!r}")
        return out


def _flatten(value: Any, path: tuple[PathPart, ...], out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key in sorted(value):
            _flatten(value[key], path + (key,), out)
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            _flatten(item, path + (index,), out)
    else:
        out[format_path(path)] = value


def diff(before: Bundle, after: Bundle) -> BundleDiff:
    """What changed from ``before`` to ``after``, per resource and per field."""
    changes: list[ResourceChange] = []
    for kind in KINDS:
        a, b = before.of_kind(kind), after.of_kind(kind)
        for name in sorted(set(a) | set(b)):
            if name not in a:
                changes.append(ResourceChange(kind, name, "added"))
            elif name not in b:
                changes.append(ResourceChange(kind, name, "removed"))
            else:
                fa: dict[str, Any] = {}
                fb: dict[str, Any] = {}
                _flatten(a[name].model_dump(mode="json", by_alias=True), (), fa)
                _flatten(b[name].model_dump(mode="json", by_alias=True), (), fb)
                fields = tuple(
                    FieldChange(p, fa.get(p), fb.get(p)) for p in sorted(set(fa) | set(fb)) if fa.get(p) != fb.get(p)
                )
                if fields:
                    changes.append(ResourceChange(kind, name, "changed", fields))
    return BundleDiff(tuple(changes))
