"""Forgiving command lines, as kubectl's: resource aliases and "did you mean".

`fleet get site`, `fleet get no` and `fleet get rev` name the same resources
as their plural forms; a mistyped command or resource is answered with the
nearest valid one (difflib), not argparse's bare "invalid choice".
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys

RESOURCES: dict[str, tuple[str, ...]] = {
    "sites": ("site", "st"),
    "nodes": ("node", "no"),
    "objects": ("object", "obj"),
    "revisions": ("revision", "rev"),
    "rollouts": ("rollout", "ro"),
}
"""Canonical resource name -> its singular and short names."""

_INVALID = re.compile(r"argument (?P<arg>\S+): invalid choice: '(?P<bad>[^']*)' \(choose from (?P<choices>.*)\)")


def nearest(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The closest choice to a mistyped word, or None when nothing is close."""
    w = word.lower()
    prefixed = [c for c in choices if c.startswith(w)] if len(w) >= 2 else []
    if len(prefixed) == 1:  # an abbreviation: `fleet rollout stat`
        return prefixed[0]
    near = difflib.get_close_matches(w, list(choices), n=1, cutoff=0.5)
    return near[0] if near else None


def canonical(word: str, allowed: tuple[str, ...]) -> str | None:
    """The canonical resource for a plural, singular or short name among ``allowed``, else None."""
    w = word.lower()
    for name in allowed:
        if w == name or w in RESOURCES.get(name, ()):
            return name
    return None


def resource_type(allowed: tuple[str, ...]):
    """An argparse ``type`` accepting every name of the ``allowed`` resources."""

    def parse(word: str) -> str:
        name = canonical(word, allowed)
        if name is not None:
            return name
        names = [n for a in allowed for n in (a, *RESOURCES.get(a, ()))]
        guess = nearest(word, names)
        near = canonical(guess, allowed) if guess else None
        raise argparse.ArgumentTypeError(
            f"unknown resource {word!r}" + (f" (did you mean {near!r}?)" if near else "")
            + f"; choose from {', '.join(allowed)}")

    parse.__name__ = "resource"
    return parse


class Parser(argparse.ArgumentParser):
    """argparse, with the nearest command suggested for a mistyped one."""

    def error(self, message: str):  # type: ignore[override]
        m = _INVALID.match(message)
        if m is None:
            if "unknown resource" in message:
                self._fail(message.split(": ", 1)[-1], f"{self.prog} --help")
            return super().error(message)
        bad = m.group("bad")
        choices = re.findall(r"'([^']*)'", m.group("choices"))
        near = nearest(bad, choices)
        if near:
            self._fail(f"unknown command {bad!r} for {self.prog!r}; did you mean {near!r}?",
                       f"{self.prog} {near} --help")
        self._fail(f"unknown command {bad!r} for {self.prog!r}; choose from {', '.join(choices)}",
                   f"{self.prog} --help")

    def _fail(self, message: str, hint: str):
        sys.stderr.write(f"error: {message}\n  next: {hint}\n")
        sys.exit(2)
