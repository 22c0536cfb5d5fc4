"""The digest of a model version's weight files: what ``fleet model digest`` prints, what a Model
spec carries, and what the agent checks before it serves.

One **manifest digest** per version, not one digest per file: a version is one directory
(``<models_dir>/<model>/<version>/``, a Hugging Face checkout), and a 70B model comes in
dozens of shards whose count and names vary between exports; one ``sha256:`` line in the spec
covers them all, and an added, removed or renamed file changes it as surely as a flipped byte
does (per-file digests would need a rule for files the spec does not list). The manifest itself
is plain text, one ``<sha256>  <size>  <path>`` line per file in path order after a version
line, so an operator can diff what two nodes hold (``fleet model digest DIR --files``).

Which files: every regular file under the directory, except hidden ones (any path part starting
with ``.``: download caches and lock files that change without changing the model). Config and
tokenizer files count as weights here: they change what the model outputs as much as a tensor
does.

Files are read in 1 MiB blocks (memory stays bounded whatever the size); the caller runs this
in a thread, never on an event loop.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MANIFEST_FORMAT = "fleet-weights-v1"
"""First line of every manifest; a new line format gets a new name (and so new digests)."""
BLOCK = 1 << 20
"""Bytes read per block while hashing."""
PREFIX = "sha256:"


@dataclass(frozen=True)
class WeightFile:
    path: str
    """Path relative to the version's directory, '/'-separated."""
    size: int
    """Bytes."""
    sha256: str
    """Hex digest of the file's content."""


@dataclass(frozen=True)
class Manifest:
    files: tuple[WeightFile, ...]

    def text(self) -> str:
        """The manifest the digest is taken over."""
        return "".join([f"{MANIFEST_FORMAT}\n", *(f"{f.sha256}  {f.size}  {f.path}\n" for f in self.files)])

    @property
    def digest(self) -> str:
        """``sha256:`` + the hex SHA-256 of :meth:`text`: the value a Model spec's ``digest`` holds."""
        return PREFIX + hashlib.sha256(self.text().encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of ``path``, streamed in :data:`BLOCK`-sized reads."""
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def weight_files(directory: Path) -> list[Path]:
    """The files a digest covers, in manifest order (see the module docstring)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    out = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / name for name in files if not name.startswith("."))
    return sorted(out, key=lambda p: p.relative_to(directory).as_posix())


def manifest(directory: Path, hasher: Callable[[Path], str] = file_sha256) -> Manifest:
    """The manifest of ``directory``; ``hasher`` hashes one file (the agent passes a cached one).

    Raises FileNotFoundError when the directory is missing or holds no file."""
    directory = Path(directory)
    paths = weight_files(directory)
    if not paths:
        raise FileNotFoundError(f"{directory} holds no files to take a digest of")
    return Manifest(tuple(WeightFile(p.relative_to(directory).as_posix(), p.stat().st_size, hasher(p))
                          for p in paths))
