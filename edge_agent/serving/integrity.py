"""Model integrity: the agent serves only weights whose digest matches the Model spec's.

Before a version loads (a Placement applied, or the same again after a restart),
:class:`WeightsVerifier` takes the manifest digest of its directory
(:mod:`fleet_contract.weights`) and compares it with the ``digest`` the hub published
in the assignment. A mismatch, a missing directory or an assignment that carries neither a
digest nor the explicit ``integrity: none`` opt-out raises :class:`IntegrityError`: the
Placement is not applied (the hub sees the error in the node's recent errors, ``fleet describe
node``), the previous models keep serving, and the outcome is reported to the hub.

Hashing a 100 GB model takes minutes, so per-file digests are cached in memory, keyed on the
file's identity and metadata (device, inode, size, mtime and ctime in ns): a file that was
replaced, rewritten or touched is hashed again, an unchanged one is not. The cache lives in the
process only, so a restarted agent re-hashes everything before it serves.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable

from fleet_contract.weights import Manifest, file_sha256, manifest

log = logging.getLogger(__name__)

REPORT_KIND = "integrity"
"""Report kind of every verification outcome (verified, unverified, refused)."""


class IntegrityError(RuntimeError):
    """The weights may not be served; the message says what differs and what to do."""


@dataclass(frozen=True)
class Verdict:
    """What one verification found."""

    model: str
    version: str
    decision: str
    """``verified`` (digest matches), ``unverified`` (the spec opts out with ``integrity: none``) or ``refused``."""
    digest: str = ""
    """The digest of the files found ('' when they could not be read)."""
    expected: str = ""
    """The spec's digest ('' when it has none)."""
    reason: str = ""
    files: int = 0
    size: int = 0

    def payload(self) -> dict:
        """The report sent to the hub (kind :data:`REPORT_KIND`)."""
        return {"time": datetime.now(UTC).isoformat(), "model": self.model, "version": self.version,
                "decision": self.decision, "digest": self.digest, "expected": self.expected,
                "reason": self.reason, "files": self.files, "sizeBytes": self.size}


class WeightsVerifier:
    """Checks ``<models_dir>/<model>/<version>/`` against a spec digest; thread-safe."""

    def __init__(self, models_dir: Path, report: Callable[[Verdict], None] | None = None,
                 hasher: Callable[[Path], str] = file_sha256) -> None:
        self.models_dir = Path(models_dir)
        self.report = report
        self._hasher = hasher
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, ...], str]] = {}
        self.hashed_bytes = 0
        """Bytes hashed so far (cache misses): how much work verification did."""

    def _hash(self, path: Path) -> str:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            hit = self._cache.get(str(path))
        if hit is not None and hit[0] == key:
            return hit[1]
        digest = self._hasher(path)
        after = os.stat(path)
        if (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) == key:
            with self._lock:  # only a file that did not change while it was read is remembered
                self._cache[str(path)] = (key, digest)
                self.hashed_bytes += st.st_size
        return digest

    def check(self, model: str, version: str, expected: str, integrity: str = "sha256") -> Verdict | None:
        """Verify one version's files; raise :class:`IntegrityError` (after reporting) when they may not serve.

        A version directory without ``config.json`` holds no model: None, and the loader refuses it
        with its own message (what to copy where)."""
        if not (self.models_dir / model / version / "config.json").exists():
            return None
        verdict = self._verdict(model, version, expected, integrity)
        level = logging.ERROR if verdict.decision == "refused" else logging.INFO
        log.log(level, "model %s version %s: weights %s %s%s", model, version, verdict.decision,
                verdict.digest or "(unreadable)", f": {verdict.reason}" if verdict.reason else "")
        if self.report is not None:
            try:
                self.report(verdict)
            except Exception:  # noqa: BLE001 - a report that cannot be queued must not decide serving
                log.exception("could not queue the integrity report of model %s version %s", model, version)
        if verdict.decision == "refused":
            raise IntegrityError(verdict.reason)
        return verdict

    def _verdict(self, model: str, version: str, expected: str, integrity: str) -> Verdict:
        directory = self.models_dir / model / version
        what = f"model {model} version {version}"
        try:
            found: Manifest = manifest(directory, self._hash)
        except OSError as exc:
            return Verdict(model, version, "refused", expected=expected,
                           reason=f"{what}: cannot take the digest of its weights at {directory}: {exc}")
        base = dict(digest=found.digest, expected=expected, files=len(found.files), size=found.size)
        if integrity == "none":
            return Verdict(model, version, "unverified", reason="the Model spec states integrity: none", **base)
        if integrity != "sha256":
            return Verdict(model, version, "refused", **base,
                           reason=f"{what}: unknown integrity mode {integrity!r} (this agent knows sha256 and none); "
                                  "upgrade the agent")
        if not expected:
            return Verdict(model, version, "refused", **base,
                           reason=f"{what}: the assignment carries no weights digest, so the files at {directory} "
                                  "cannot be verified (fail-closed); add `digest:` to the Model version "
                                  "(`fleet model digest DIR` prints it) or state `integrity: none`, then fleet apply")
        if found.digest != expected:
            return Verdict(model, version, "refused", **base,
                           reason=f"{what}: the weights at {directory} have digest {found.digest}, the Model spec "
                                  f"says {expected}: refusing to serve them; restore the files (compare "
                                  f"`fleet model digest {directory} --files` with a good copy) or, if the new files "
                                  "are intended, put their digest in the Model spec and fleet apply")
        return Verdict(model, version, "verified", **base)
