"""Names are whole-string matches: "fra-1\\n" is not a name anywhere (issue 10, item 8)."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from hub.admin import object_key_problem
from hub.policy.schema import Name
from hub.rollout.spec import RolloutSpec
from hub.security import certs

BAD = ["fra-1\n", "fra-1\r\n", "\nfra-1", "fra-1 ", "Fra-1", "-fra", ""]


@pytest.mark.parametrize("bad", BAD)
def test_an_agent_certificate_is_not_minted_for_a_name_with_a_newline(tmp_path, bad) -> None:
    certs.init_ca(tmp_path)
    with pytest.raises(certs.CertError, match="not a valid name"):
        certs.issue_agent(tmp_path, bad, "gpu-a")
    with pytest.raises(certs.CertError, match="not a valid name"):
        certs.issue_agent(tmp_path, "fra-1", bad)
    assert not list(tmp_path.glob("agents/**/*.pem")) and not list(tmp_path.glob("*fra-1*"))


@pytest.mark.parametrize("bad", BAD)
def test_admin_object_names_and_kinds_are_whole_strings(bad) -> None:
    assert object_key_problem("Config", bad) is not None
    assert object_key_problem("Config\n", "x") is not None
    assert object_key_problem("Config", "fra-1") is None


def test_policy_and_rollout_names_refuse_a_trailing_newline() -> None:
    ta = TypeAdapter(Name)
    assert ta.validate_python("fra-1") == "fra-1"
    for bad in BAD:
        with pytest.raises(ValidationError):
            ta.validate_python(bad)
        with pytest.raises(ValidationError):
            RolloutSpec(service=bad, to_version="v2")


@pytest.mark.parametrize("kind", ["Placement", "ResidencyPolicy", "PriorityClass"])
def test_revision_managed_kinds_are_refused_with_the_command_to_use(kind) -> None:
    problem = object_key_problem(kind, "germany-only")
    assert problem is not None and "\nnext: edit the YAML and run `fleet apply -f ...`" in problem
