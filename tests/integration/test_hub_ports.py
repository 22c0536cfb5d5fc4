"""A second hub cannot take a port another hub holds (issue 10, item 8), with two real hub processes.

The agent port is opened with SO_REUSEPORT for one hub's --workers; a second hub on it once started
silently and took half the agents. A busy admin port gave "unexpected RuntimeError ... report it"
and could leave the first hub's fleetconfig.yaml overwritten.
"""

from __future__ import annotations

import pytest

from tests.integration.cliharness import Hub, assert_clean_error, fleet, free_port


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    h = Hub(tmp_path_factory.mktemp("first"))
    try:
        h.wait_ready()
        yield h
    finally:
        h.close()


def serve(data, listen: int, admin: int, *extra: str):
    return fleet(None, "hub", "serve", "--insecure", "--data-dir", str(data), "--listen", f"127.0.0.1:{listen}",
                 "--admin-listen", f"127.0.0.1:{admin}", *extra, timeout=180)


def test_a_second_hub_on_the_agent_port_is_refused(first, tmp_path) -> None:
    proc = serve(tmp_path / "second", first.port, free_port())
    assert_clean_error(proc)
    assert f"the agent address 127.0.0.1:{first.port} is in use" in proc.stderr
    assert "--listen" in proc.stderr
    assert not (tmp_path / "second" / "fleetconfig.yaml").exists()
    assert first.proc.poll() is None
    assert fleet(first, "get", "sites").returncode == 0


def test_a_busy_admin_port_is_a_clear_error_and_leaves_the_fleetconfig_alone(first) -> None:
    config = first.data / "fleetconfig.yaml"
    before = config.read_bytes()
    proc = serve(first.data, free_port(), first.admin_port)
    assert_clean_error(proc)
    assert f"the admin API address 127.0.0.1:{first.admin_port} is in use" in proc.stderr
    assert "unexpected" not in proc.stderr
    assert config.read_bytes() == before
    assert not list(first.data.glob(".fleetconfig.yaml.*"))


def test_a_hubs_own_workers_share_its_agent_port(tmp_path) -> None:
    h = Hub(tmp_path, extra=("--workers", "2"))
    try:
        h.wait_ready(timeout=180)
        assert fleet(h, "get", "sites").returncode == 0
        proc = serve(tmp_path / "other", h.port, free_port())
        assert_clean_error(proc)
        assert "is in use" in proc.stderr
        log = (tmp_path / "hub.log").read_text()
        assert "[worker" in log and "hub serving agents on port" in log
    finally:
        h.close()
