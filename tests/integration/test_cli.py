"""The `fleet` CLI as a user runs it: subprocesses against a real hub."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.integration.cliharness import Hub, assert_clean_error, fleet, free_port

@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = Hub(tmp_path_factory.mktemp("cli"))
    try:
        h.start_agent("fra", "a")  # it retries until the hub is up
        h.wait_ready()
        yield h
    finally:
        h.close()
    assert h.proc.returncode is not None


def test_get_sites_json_shows_the_connected_agent(hub):
    deadline = time.monotonic() + 30
    while True:
        proc = fleet(hub, "get", "sites", "-o", "json")
        assert proc.returncode == 0, proc.stderr
        sites = json.loads(proc.stdout)
        if sites and sites[0]["phase"] == "Connected" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(s["site"], s["phase"], s["nodes"], s["gpus"], s["country"]) for s in sites] == [
        ("fra", "Connected", "1/1", 2, "DE")
    ]
    nodes = json.loads(fleet(hub, "get", "nodes", "-o", "json").stdout)
    assert [(n["site"], n["node"], n["gpus"]) for n in nodes] == [("fra", "a", "2x NVIDIA L4 (24GiB)")]


def test_set_then_get_objects_yaml(hub):
    proc = fleet(hub, "set", "Config", "x", "a=1", 'b={"k": [1, 2]}', "c=plain text", "--site", "fra")
    assert proc.returncode == 0, proc.stderr
    assert "Config/x set at version" in proc.stdout
    deadline = time.monotonic() + 30
    while True:
        proc = fleet(hub, "get", "objects", "-o", "yaml")
        assert proc.returncode == 0, proc.stderr
        objs = {o["name"]: o for o in yaml.safe_load(proc.stdout)}
        if objs["x"]["applied"] == "1/1" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    x = objs["x"]
    assert (x["kind"], x["target"], x["applied"]) == ("Config", "fra/*", "1/1")
    assert x["spec"] == {"a": 1, "b": {"k": [1, 2]}, "c": "plain text"}
    # The table view is there too.
    table = fleet(hub, "get", "objects")
    assert table.returncode == 0 and "Config" in table.stdout and "fra/*" in table.stdout


def test_wrong_token_is_a_clean_error(hub):
    proc = fleet(hub, "get", "sites", "--token", "not-the-token-at-all")
    assert_clean_error(proc)
    assert "refused the admin token" in proc.stderr


def test_unreachable_hub_is_a_clean_error_and_debug_shows_traceback(hub):
    nowhere = f"127.0.0.1:{free_port()}"
    proc = fleet(hub, "get", "sites", "--hub", nowhere)
    assert_clean_error(proc)
    assert f"cannot reach the hub at {nowhere}" in proc.stderr
    proc = fleet(hub, "get", "sites", "--hub", nowhere, env={"FLEET_DEBUG": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "CliError" in proc.stderr


def test_bad_key_value_is_a_clean_error(hub):
    proc = fleet(hub, "set", "Config", "y", "novalue")
    assert_clean_error(proc)
    assert proc.returncode == 2
    assert "'novalue' is not KEY=VALUE" in proc.stderr
    objs = yaml.safe_load(fleet(hub, "get", "objects", "-o", "yaml").stdout) or []
    assert "y" not in {o["name"] for o in objs}, "nothing published"


def test_no_hub_configured_is_a_clean_error(tmp_path):
    proc = fleet(None, "get", "sites", env={"FLEETCONFIG": str(tmp_path / "none.yaml")})
    assert_clean_error(proc)
    assert "no hub address" in proc.stderr


def test_certs_init_twice_without_force_fails_clearly(tmp_path):
    d = tmp_path / "certs"
    first = fleet(None, "certs", "init", "--dir", str(d))
    assert first.returncode == 0, first.stderr
    ca = (d / "ca.pem").read_bytes()
    second = fleet(None, "certs", "init", "--dir", str(d))
    assert_clean_error(second, next_line=False)
    assert second.returncode == 2
    assert "exists; pass --force" in second.stderr
    assert (d / "ca.pem").read_bytes() == ca, "the CA was not touched"
    forced = fleet(None, "certs", "init", "--dir", str(d), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (d / "ca.pem").read_bytes() != ca
