"""Fixtures for tests against a real kube-apiserver + etcd (see envtest.py).

``kube_apiserver`` (session): the running server, a KubeAPIServer with
  .url, .kubeconfig, .ca_file, .admin_token, .version, .binaries,
  .restart_apiserver(downtime=0), .stop_apiserver(), .start_apiserver(),
  .kubectl(*args), .api_client(), .write_kubeconfig(path, token=...),
  .service_account_token(ns, name), .request_json(method, path, body).
``kube_client`` (function): an admin ``kubernetes.client.ApiClient``, closed after the test.

Without the binaries and without Go to build them, the tests skip with the
reason; under CI=true they fail instead, so CI never passes by skipping.

A cold build takes 10-30 minutes, longer than a test's timeout, so it runs
once after collection (outside any test's timer) when a collected test uses
``kube_apiserver``; its log is ``<cache>/build.log`` under pytest's basetemp.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kubernetes.envtest import KubeAPIServer, KubeBinaries, KubeBinariesUnavailable, locate_binaries

_STASH_KEY = pytest.StashKey[KubeBinaries | Exception]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"CI=true and the Kubernetes tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or find) the binaries before any test timer starts."""
    if session.config.option.collectonly:
        return
    if not any("kube_apiserver" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    log = session.config._tmp_path_factory.getbasetemp() / "kube-build.log"  # type: ignore[attr-defined]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"kube: locating kube-apiserver (tools/kube/build.sh; a cold build logs to {log})")
    start = time.monotonic()
    result: KubeBinaries | Exception
    try:
        result = locate_binaries(build_log=log)
    except (KubeBinariesUnavailable, RuntimeError, OSError) as exc:
        result = exc
    session.config.stash[_STASH_KEY] = result
    if reporter is not None and time.monotonic() - start > 5:
        reporter.write_line(f"kube: build.sh took {time.monotonic() - start:.0f}s")


@pytest.fixture(scope="session")
def kube_binaries(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> KubeBinaries:
    result = pytestconfig.stash.get(_STASH_KEY, None)
    if result is None:  # collected without the hook (e.g. fixture requested dynamically)
        try:
            result = locate_binaries(build_log=tmp_path_factory.getbasetemp() / "kube-build.log")
        except (KubeBinariesUnavailable, RuntimeError, OSError) as exc:
            result = exc
        pytestconfig.stash[_STASH_KEY] = result
    if isinstance(result, KubeBinariesUnavailable):
        _unavailable(str(result))
    if isinstance(result, Exception):
        pytest.fail(f"cannot build kube-apiserver: {result}", pytrace=False)
    return result


@pytest.fixture(scope="session")
def kube_apiserver(kube_binaries: KubeBinaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPIServer]:
    """A real kube-apiserver (RBAC + Node authorisation) and etcd on loopback
    for the whole session; torn down, process groups killed, at the end."""
    server = KubeAPIServer(binaries=kube_binaries, workdir=tmp_path_factory.mktemp("kube"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def kube_client(kube_apiserver: KubeAPIServer) -> Iterator[Any]:
    """An admin ``kubernetes.client.ApiClient`` for one test, closed after it."""
    client = kube_apiserver.api_client()
    try:
        yield client
    finally:
        client.close()
