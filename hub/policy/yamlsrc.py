"""YAML documents with line numbers.

PyYAML's composer gives nodes with source marks; we build plain Python
data from them ourselves, recording the line of every mapping key and
sequence item, so an error found later at ``spec.gpuPools[1].memory`` can
name its line. Duplicate keys, recursive aliases and merge keys are
reported as problems instead of being silently accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from hub.policy.errors import PathPart, Problem, format_path

_MAX_DEPTH = 64
#: libyaml's parser when PyYAML was built with it (same nodes and marks, ~10x faster).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SUFFIXES = (".yaml", ".yml")


@dataclass
class Document:
    """One YAML document of a file, as plain data plus a path -> line map."""

    file: str
    line: int
    """Line where the document starts (1-based)."""
    data: Any
    lines: dict[tuple[PathPart, ...], int] = field(default_factory=dict)

    def line_of(self, path: Iterable[PathPart]) -> int:
        """Line of the deepest recorded prefix of ``path``."""
        parts = tuple(path)
        for end in range(len(parts), 0, -1):
            line = self.lines.get(parts[:end])
            if line is not None:
                return line
        return self.line

    def problem(self, path: Iterable[PathPart], message: str) -> Problem:
        parts = tuple(path)
        return Problem(self.file, self.line_of(parts), format_path(parts), message)


class _Builder:
    def __init__(self, doc: Document, problems: list[Problem]):
        self.doc = doc
        self.problems = problems
        self.constructor = yaml.SafeLoader("")
        self.active: set[int] = set()

    def build(self, node: yaml.Node, path: tuple[PathPart, ...]) -> Any:
        if id(node) in self.active:
            self.problems.append(self.doc.problem(path, "recursive YAML alias (a cycle); remove the self-reference"))
            return None
        if len(path) > _MAX_DEPTH:
            self.problems.append(self.doc.problem(path, f"nested deeper than {_MAX_DEPTH} levels"))
            return None
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.constructor.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError, OverflowError) as exc:
                self.problems.append(self.doc.problem(path, f"bad scalar {node.value!r}: {exc}"))
                return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                out_list = []
                for index, item in enumerate(node.value):
                    self.doc.lines[path + (index,)] = item.start_mark.line + 1
                    out_list.append(self.build(item, path + (index,)))
                return out_list
            if isinstance(node, yaml.MappingNode):
                out: dict[Any, Any] = {}
                for key_node, value_node in node.value:
                    line = key_node.start_mark.line + 1
                    if not isinstance(key_node, yaml.ScalarNode):
                        self.problems.append(Problem(self.doc.file, line, format_path(path), "mapping keys must be plain strings"))
                        continue
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        self.problems.append(Problem(self.doc.file, line, format_path(path), "YAML merge keys ('<<') are not supported; write the fields out"))
                        continue
                    key = key_node.value
                    if key in out:
                        first = self.doc.lines.get(path + (key,), 0)
                        self.problems.append(
                            Problem(self.doc.file, line, format_path(path + (key,)), f"duplicate key {key!r} (first at line {first})")
                        )
                        continue
                    self.doc.lines[path + (key,)] = line
                    out[key] = self.build(value_node, path + (key,))
                return out
            self.problems.append(self.doc.problem(path, f"unsupported YAML node {type(node).__name__}"))
            return None
        finally:
            self.active.discard(id(node))


def parse_text(text: str, file: str, problems: list[Problem]) -> list[Document]:
    """Split ``text`` into documents; syntax errors become problems."""
    documents: list[Document] = []
    try:
        for node in yaml.compose_all(text, Loader=_LOADER):
            if node is None:
                continue
            doc = Document(file=file, line=node.start_mark.line + 1, data=None)
            doc.data = _Builder(doc, problems).build(node, ())
            documents.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        problems.append(Problem(file, line, "", f"YAML syntax error: {what}"))
    except yaml.YAMLError as exc:  # reader errors (bad characters) carry no mark
        problems.append(Problem(file, 0, "", f"YAML error: {exc}"))
    except RecursionError:
        problems.append(Problem(file, 0, "", "YAML nested too deeply"))
    return documents


def collect_files(paths: Iterable[str | Path], problems: list[Problem]) -> list[Path]:
    """Expand files and directories (recursively, *.yaml / *.yml, sorted)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
            if not found:
                problems.append(Problem(str(path), 0, "", "directory holds no .yaml or .yml files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), 0, "", "no such file or directory"))
    return files


def read_documents(paths: Iterable[str | Path], problems: list[Problem]) -> list[Document]:
    documents: list[Document] = []
    for path in collect_files(paths, problems):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(path), 0, "", f"cannot read: {exc}"))
            continue
        documents.extend(parse_text(text, str(path), problems))
    return documents
