"""YAML documents with line numbers.

PyYAML's composer gives nodes with source marks; we build plain Python
data from them ourselves, recording the line of every mapping key and
sequence item, so an error found later at ``spec.gpuPools[1].memory`` can
name its line. Duplicate keys, aliases and merge keys are reported as
problems instead of being silently accepted.

Every input is parsed within a bound of time and memory: a file's size is
checked before it is read (`MAX_FILE_BYTES`, and `MAX_TOTAL_BYTES` for all
files of one load), and one streaming pass over the parser's events refuses
aliases (`*name` re-uses a node; a few lines of them, "billion laughs", expand
into gigabytes), nesting deeper than `MAX_DEPTH` and more than
`MAX_DOCUMENTS` documents before anything is composed or built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from hub.policy.errors import PathPart, Problem, format_path

MAX_DEPTH = 64
"""Deepest nesting of mappings and sequences in a document (the schema needs fewer than 10)."""
MAX_FILE_BYTES = 2 * 1024 * 1024
"""Largest policy file, in bytes (the shipped 30-site fleet is 40 KiB; split larger fleets into files)."""
MAX_TOTAL_BYTES = 4 * 1024 * 1024
"""Largest total of the files one load reads, in bytes."""
MAX_DOCUMENTS = 10_000
"""Most YAML documents in one file."""
_MAX_DEPTH = MAX_DEPTH
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


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def prescan(text: str, file: str) -> list[Problem]:
    """Problems that make ``text`` unsafe to compose: aliases, deep nesting, too many documents.

    One pass over the parser's events, which is linear in the text and holds one event at a
    time; nothing is composed or expanded. Raises yaml.YAMLError on a syntax error.
    """
    problems: list[Problem] = []
    depth = documents = 0
    open_anchors: list[str | None] = []
    for event in yaml.parse(text, Loader=_LOADER):
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > MAX_DOCUMENTS:
                problems.append(Problem(file, line, "", f"more than {MAX_DOCUMENTS} YAML documents in one file; "
                                                        "split it into several files"))
                break
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                msg = f"recursive YAML alias *{event.anchor} (a cycle); remove the self-reference"
            else:
                msg = (f"YAML alias *{event.anchor} is not supported: write the value out (aliases re-use nodes, "
                       "and a few lines of them can expand into gigabytes)")
            problems.append(Problem(file, line, "", msg))
            if len(problems) >= 10:
                break
        elif isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            open_anchors.append(event.anchor)
            if depth > MAX_DEPTH:
                problems.append(Problem(file, line, "", f"nested deeper than {MAX_DEPTH} levels"))
                break
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            open_anchors.pop()
    return problems


def parse_text(text: str, file: str, problems: list[Problem]) -> list[Document]:
    """Split ``text`` into documents; syntax errors and unsafe input (see `prescan`) become problems."""
    documents: list[Document] = []
    if len(text) > MAX_FILE_BYTES:
        problems.append(Problem(file, 0, "", f"{_mib(len(text))} of YAML; a policy file may hold at most "
                                             f"{_mib(MAX_FILE_BYTES)}: split it into several files"))
        return documents
    try:
        unsafe = prescan(text, file)
        if unsafe:
            problems.extend(unsafe)
            return documents
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


class _TooBig(Exception):
    """A file over its byte budget; the message is its size."""


def _read_bounded(path: Path, limit: int) -> tuple[str, int]:
    """(text, bytes) of the file; _TooBig when it holds more than ``limit`` bytes (checked before reading)."""
    size = path.stat().st_size
    if size > limit:
        raise _TooBig(_mib(size))
    with path.open("rb") as f:
        data = f.read(limit + 1)  # the file may have grown since stat
    if len(data) > limit:
        raise _TooBig(f"more than {_mib(limit)}")
    return data.decode("utf-8"), len(data)


def read_documents(paths: Iterable[str | Path], problems: list[Problem]) -> list[Document]:
    documents: list[Document] = []
    total = 0
    for path in collect_files(paths, problems):
        budget = min(MAX_FILE_BYTES, MAX_TOTAL_BYTES - total)
        try:
            text, size = _read_bounded(path, budget)
        except _TooBig as exc:
            if budget < MAX_FILE_BYTES:
                problems.append(Problem(str(path), 0, "", f"the files of one apply may hold at most "
                                                          f"{_mib(MAX_TOTAL_BYTES)} of YAML together; this one "
                                                          "goes past that: apply fewer files at a time"))
                break
            problems.append(Problem(str(path), 0, "", f"{exc} of YAML; a policy file may hold at most "
                                                      f"{_mib(MAX_FILE_BYTES)}: split it into several files"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(path), 0, "", f"cannot read: {exc}"))
            continue
        total += size
        documents.extend(parse_text(text, str(path), problems))
    return documents
