"""Problems found in policy input, and the one exception that carries them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence, Union

PathPart = Union[str, int]


def format_path(path: Sequence[PathPart]) -> str:
    """``('spec', 'allow', 'jurisdictions', 1)`` -> ``spec.allow.jurisdictions[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the input: where it is and what to change."""

    file: str
    line: int
    """1-based line; 0 when unknown."""
    path: str
    """Dotted path inside the document, e.g. ``spec.allow.jurisdictions[1]``; may be empty."""
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(Exception):
    """The bundle is invalid; ``problems`` lists every problem found, one per line."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: list[Problem] = sorted(set(problems))
        if not self.problems:
            raise ValueError("PolicyError needs at least one problem")
        super().__init__("\n".join(str(p) for p in self.problems))
