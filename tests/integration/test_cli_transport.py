"""The admin token never travels in plaintext unless asked for (issue 10, item 6).

Without a CA the CLI once sent `authorization: Bearer ...` to a plaintext listener and said nothing.
Now it refuses before connecting unless --insecure, FLEET_INSECURE=1 or the fleetconfig says
`insecure: true`, and then warns on stderr.
"""

from __future__ import annotations

import socket

import pytest
import yaml

from tests.integration.cliharness import INSECURE_WARNING, Hub, assert_clean_error, fleet


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = Hub(tmp_path_factory.mktemp("transport"))
    try:
        h.wait_ready()
        yield h
    finally:
        h.close()


def test_no_ca_and_no_insecure_is_refused_before_anything_is_sent(tmp_path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        proc = fleet(None, "get", "sites", "--hub", f"127.0.0.1:{port}", "--token", "s3cret-token-0123456789",
                     env={"FLEETCONFIG": str(tmp_path / "none.yaml")})
        assert_clean_error(proc)
        assert proc.returncode == 2
        assert "the admin token would travel in plaintext; nothing was sent" in proc.stderr
        assert "--ca" in proc.stderr and "--insecure" in proc.stderr
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected


def test_an_insecure_hub_writes_insecure_explicitly_and_the_cli_warns(hub) -> None:
    cfg = yaml.safe_load((hub.data / "fleetconfig.yaml").read_text())
    assert cfg["insecure"] is True and cfg["ca"] is None
    proc = fleet(hub, "get", "sites")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(f"{INSECURE_WARNING}{cfg['hub']}; the admin token is sent unencrypted")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_insecure_by_flag_or_environment_connects_and_warns(hub, tmp_path, how) -> None:
    cfg = yaml.safe_load((hub.data / "fleetconfig.yaml").read_text())
    args = ["get", "sites", "--hub", cfg["hub"], "--token", cfg["token"]]
    env = {"FLEETCONFIG": str(tmp_path / "none.yaml")}
    if how == "flag":
        args.append("--insecure")
    else:
        env["FLEET_INSECURE"] = "1"
    proc = fleet(None, *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(INSECURE_WARNING)
