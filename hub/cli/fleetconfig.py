"""Where the CLI finds the hub: the fleetconfig file `fleet hub serve` writes.

One default for both sides: the hub writes ``DATA_DIR/fleetconfig.yaml``
(``~/.fleet/hub/fleetconfig.yaml`` with the default ``--data-dir``) and the
CLI reads that same file unless FLEETCONFIG names another.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from hub.cli.errors import CliError

DEFAULT_DATA_DIR = "~/.fleet/hub"
"""`fleet hub serve --data-dir` default (SQLite store, admin token, fleetconfig)."""
FILENAME = "fleetconfig.yaml"


def default_path() -> Path:
    """The fleetconfig a hub started with the default data directory writes."""
    return Path(DEFAULT_DATA_DIR).expanduser() / FILENAME


def path() -> Path:
    """FLEETCONFIG, else :func:`default_path`."""
    env = os.environ.get("FLEETCONFIG")
    return Path(env).expanduser() if env else default_path()


def load() -> tuple[Path, dict]:
    """The fleetconfig's path and settings; ``{}`` when the file does not exist (flags or the environment
    may name the hub; :func:`describe` and :func:`hint` say what was missing if nothing does).

    A file that is not a YAML mapping is an error of its own (not "start a hub").
    """
    p = path()
    if not p.exists():
        return p, {}
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise CliError(f"cannot read the fleetconfig {p}: {exc.strerror}", "check its permissions") from None
    except yaml.YAMLError as exc:
        raise CliError(f"the fleetconfig {p} is not valid YAML: {exc}",
                       "fix it, or delete it and restart `fleet hub serve` to write it again") from None
    if data is None:
        return p, {}
    if not isinstance(data, dict):
        raise CliError(f"the fleetconfig {p} is not a mapping of hub, token and ca (it holds a "
                       f"{type(data).__name__})",
                       "fix it, or delete it and restart `fleet hub serve` to write it again")
    return p, data


def _named_but_missing(p: Path) -> bool:
    return bool(os.environ.get("FLEETCONFIG")) and not p.exists()


def describe(p: Path) -> str:
    """The fleetconfig for an error message: a FLEETCONFIG naming a missing file says so."""
    return f"FLEETCONFIG={p}, which does not exist" if _named_but_missing(p) else str(p)


def hint(p: Path) -> str:
    """What to do when the fleetconfig gave no hub."""
    if _named_but_missing(p):
        return (f"point FLEETCONFIG at the {FILENAME} in the hub's --data-dir (default {default_path()}), or "
                "unset it; or pass --hub HOST:PORT")
    return "start one with `fleet hub serve`, or pass --hub HOST:PORT"
