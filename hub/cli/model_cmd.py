"""`fleet model digest DIR`: the weights digest a Model version's spec carries.

Run it on the model directory agents will serve (``<models_dir>/<model>/<version>/``) and
paste the ``digest:`` line it prints into that version in the Model YAML; agents then refuse
files that differ (fleet_contract/weights.py says which files count and how).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from fleet_contract.weights import manifest
from hub.cli.errors import CliError
from hub.cli.output import emit
from hub.policy import Bundle


def add_parsers(sub) -> None:
    m = sub.add_parser("model", help="model weights: the digest a Model version carries")
    msub = m.add_subparsers(dest="model_cmd", required=True)
    d = msub.add_parser("digest", help="print the SHA-256 manifest digest of a model directory as a YAML snippet")
    d.add_argument("path", type=Path, help="the version's model directory (config.json, *.safetensors, tokenizer ...)")
    d.add_argument("--files", action="store_true", help="also list each file's SHA-256 and size (to compare two copies)")
    d.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml", help="output format (default yaml)")


def run(args) -> int:
    try:
        found = manifest(args.path)
    except OSError as exc:
        raise CliError(f"cannot take the digest of {args.path}: {exc}",
                       "give the directory of one model version, e.g. /models/assistant/v3", code=2) from None
    row: dict = {"digest": found.digest}
    if args.files or args.output == "json":
        row["files"] = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in found.files]
    if args.output == "json":
        emit([row], [], "json")
        return 0
    print(f"# {args.path}: {len(found.files)} files, {found.size / 2**30:.2f} GiB; put this in the Model version",
          file=sys.stderr)
    print(f"digest: {found.digest}")
    if args.files:
        print("# files (sha256  size  path):")
        for f in found.files:
            print(f"#   {f.sha256}  {f.size}  {f.path}")
    return 0


def pin_digests(bundle: Bundle, digest_of: Callable[[str, str], str | None]) -> Bundle:
    """``bundle`` with each Model version's ``digest`` set to ``digest_of(model, version)`` (and its
    ``integrity: none`` dropped); versions it answers None for stay as they are. ``fleet demo``
    uses this for the models it builds, so its agents verify what they serve."""
    items = json.loads(bundle.to_json())
    for item in items:
        if item.get("kind") != "Model":
            continue
        for v in item["spec"]["versions"]:
            digest = digest_of(item["metadata"]["name"], v["name"])
            if digest is not None:
                v["digest"], v["integrity"] = digest, "sha256"
    return Bundle.from_json(json.dumps(items))
