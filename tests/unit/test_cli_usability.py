"""The CLI as a user meets it before any hub answers: command and resource names, the fleetconfig,
and a quiet store migration (issue 15)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hub.cli import fleetconfig
from hub.cli.main import parser
from hub.cli.suggest import nearest
from tests.integration.cliharness import assert_clean_error, fleet


@pytest.mark.parametrize("word,canonical", [("site", "sites"), ("sites", "sites"), ("st", "sites"),
                                            ("node", "nodes"), ("no", "nodes"), ("obj", "objects"),
                                            ("object", "objects"), ("rev", "revisions"), ("revision", "revisions"),
                                            ("ro", "rollouts"), ("rollout", "rollouts"), ("Nodes", "nodes")])
def test_get_accepts_singular_and_short_resource_names(word, canonical):
    assert parser().parse_args(["get", word]).what == canonical


def test_describe_accepts_plural_and_short_names():
    assert parser().parse_args(["describe", "sites", "fra-1"]).what == "sites"
    assert parser().parse_args(["describe", "no", "fra-1/a"]).what == "nodes"


def test_nearest_prefers_an_abbreviation_then_the_closest_word():
    assert nearest("stat", ["start", "status", "pause"]) == "status"
    assert nearest("gte", ["get", "describe", "set"]) == "get"
    assert nearest("zzz", ["get", "describe"]) is None


def test_a_mistyped_command_gets_the_nearest_one():
    proc = fleet(None, "gte", "sites")
    assert_clean_error(proc)
    assert proc.returncode == 2
    assert "unknown command 'gte'" in proc.stderr and "did you mean 'get'?" in proc.stderr
    assert "fleet get --help" in proc.stderr


def test_a_mistyped_resource_gets_the_nearest_one():
    proc = fleet(None, "get", "sitez")
    assert_clean_error(proc)
    assert proc.returncode == 2 and "unknown resource 'sitez' (did you mean 'sites'?)" in proc.stderr


def test_a_mistyped_subcommand_gets_the_nearest_one():
    proc = fleet(None, "rollout", "stauts", "chat")
    assert_clean_error(proc)
    assert "did you mean 'status'?" in proc.stderr


def test_the_cli_reads_the_fleetconfig_the_hub_writes_by_default():
    # `fleet hub serve` writes DATA_DIR/fleetconfig.yaml; its default data dir is where the CLI looks.
    serve = next(a for a in parser()._subparsers._group_actions[0].choices["hub"]._subparsers
                 ._group_actions[0].choices["serve"]._actions if a.dest == "data_dir")
    assert Path(serve.default).expanduser() / "fleetconfig.yaml" == fleetconfig.default_path()


def test_a_fleetconfig_that_does_not_exist_gets_its_own_message(tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = fleet(None, "get", "sites", env={"FLEETCONFIG": str(missing)})
    assert_clean_error(proc)
    assert f"no hub address: nothing in --hub, FLEET_HUB or FLEETCONFIG={missing}, which does not exist" \
        in proc.stderr
    assert "next: point FLEETCONFIG at the fleetconfig.yaml in the hub's --data-dir" in proc.stderr
    assert "start one with `fleet hub serve`" not in proc.stderr


@pytest.mark.parametrize("text,what", [("hub: [unclosed\n", "is not valid YAML"),
                                       ("- just\n- a list\n", "is not a mapping of hub, token and ca")])
def test_a_fleetconfig_that_is_not_a_yaml_mapping_gets_its_own_message(tmp_path, text, what):
    bad = tmp_path / "fleetconfig.yaml"
    bad.write_text(text)
    proc = fleet(None, "get", "sites", env={"FLEETCONFIG": str(bad)})
    assert_clean_error(proc)
    assert f"the fleetconfig {bad} {what}" in proc.stderr


def test_migrating_logs_one_line_and_an_up_to_date_store_none(tmp_path):
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')\n"
        "from hub.store import Database\n"
        f"Database('sqlite:///{tmp_path}/fleet.db').migrate()\n"
        "print('--- again', file=sys.stderr, flush=True)\n"
        f"Database('sqlite:///{tmp_path}/fleet.db').migrate()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, again = proc.stderr.split("--- again\n")
    # Alembic's own lines (setup plugin, Context impl, Will assume, Running upgrade) are DEBUG now.
    assert re.fullmatch(r"INFO hub\.store\.migrations: store schema migrated from empty to \d{4} "
                        r"\(\d+ steps on sqlite\)\n", first), first
    assert again == "", again


def test_commands_that_plan_wait_longer_for_the_hub_and_the_wait_can_be_set():
    """`fleet apply` of a large fleet waits for the planner (20 s and more for the shipped fleet on a busy
    2-core machine): it must not give up after the 15 s that a `get` waits."""
    from hub.cli.main import request_timeout

    p = parser()
    assert request_timeout(p.parse_args(["apply", "-f", "x.yaml"])) == 300.0
    assert request_timeout(p.parse_args(["plan", "-f", "x.yaml"])) == 300.0
    assert request_timeout(p.parse_args(["get", "nodes"])) == 15.0
    assert request_timeout(p.parse_args(["get", "nodes", "--request-timeout", "2.5"])) == 2.5
    assert request_timeout(p.parse_args(["apply", "-f", "x.yaml", "--request-timeout", "900"])) == 900.0
    for bad in ("0", "-1", "soon", "1e9"):
        with pytest.raises(SystemExit):
            p.parse_args(["get", "nodes", "--request-timeout", bad])
