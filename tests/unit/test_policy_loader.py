"""Loader and validation: file:line: path: message, every problem, never partial."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hub.policy import Bundle, PolicyError, load_bundle, load_bundle_text

ROOT = Path(__file__).resolve().parents[2]

SITE = """\
apiVersion: fleet.edge/v1alpha1
kind: Site
metadata:
  name: fra-1
spec:
  region: eu-central
  country: "DE"
  gridIntensity: 344gCO2e/kWh
  networkLatency: {eu-central: 5ms, us-east: 90ms}
  gpuPools:
  - name: l4
    gpuType: L4
    count: 4
    memory: 24GB
    price: $0.85/h
    power: 72W
"""

MODEL = """\
apiVersion: fleet.edge/v1alpha1
kind: Model
metadata: {name: assistant}
spec:
  versions:
  - name: v3
    integrity: none
    weightSize: 8GiB
    gpuMemoryPerReplica: 12GiB
    profiles:
    - {gpuType: L4, prefillThroughput: 3000tok/s, decodeThroughput: 480tok/s, maxBatch: 16, tpotAtBatch1: 27ms}
"""

POLICY = """\
apiVersion: fleet.edge/v1alpha1
kind: ResidencyPolicy
metadata:
  name: eu
spec:
  dataClass: personal-eu
  allow:
    jurisdictions: [EU, EEA]
"""

PRIORITY = """\
apiVersion: fleet.edge/v1alpha1
kind: PriorityClass
metadata:
  name: interactive
spec:
  value: 1000
"""


def service(**over: str) -> str:
    fields = {"model": "assistant", "version": "v3", "dataClass": "personal-eu", "priorityClass": "interactive",
              "region": "eu-central", "ttft": "500ms", "tpot": "50ms"}
    fields.update(over)
    return textwrap.dedent(f"""\
        apiVersion: fleet.edge/v1alpha1
        kind: Service
        metadata:
          name: chat
        spec:
          model: {fields['model']}
          version: {fields['version']}
          slo: {{ttftP95: {fields['ttft']}, tpotP95: {fields['tpot']}}}
          demand:
          - {{region: {fields['region']}, rate: 2rps, meanPromptTokens: 500, meanOutputTokens: 100}}
          priorityClass: {fields['priorityClass']}
          dataClass: {fields['dataClass']}
        """)


def docs(*parts: str) -> str:
    return "---\n".join(parts)


def problems_of(text: str, file: str = "policies/eu.yaml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_bundle_text(text, file)
    return [str(p) for p in info.value.problems]


def test_valid_bundle_loads() -> None:
    bundle = load_bundle_text(docs(SITE, MODEL, POLICY, PRIORITY, service()))
    assert isinstance(bundle, Bundle)
    assert set(bundle.services) == {"chat"}
    site = bundle.sites["fra-1"].spec
    assert site.gpu_pools[0].memory == 24e9
    assert site.network_latency["eu-central"] == pytest.approx(0.005)
    assert site.jurisdictions == ("EU", "EEA")


def test_shipped_examples_load() -> None:
    bundle = load_bundle([ROOT / "fleet_configs", ROOT / "policies"])
    assert len(bundle.sites) >= 24 + 3 + 3
    europe = [s for s in bundle.sites.values() if "EEA" in s.spec.jurisdictions or s.spec.country == "GB"]
    assert len(europe) >= 24
    assert {"personal-eu", "personal-de", "public"} <= {p.spec.data_class for p in bundle.residency_policies.values()}
    assert {"interactive", "batch", "background"} <= set(bundle.priority_classes)
    assert {v.name for v in bundle.models["assistant"].spec.versions} == {"v2", "v3", "v3-slow"}


def test_issue_example_message_with_file_line_path_and_suggestion() -> None:
    bad = POLICY.replace("[EU, EEA]", "[EEA, EUU]")
    assert problems_of(docs(SITE, MODEL, bad, PRIORITY, service())) == [
        "policies/eu.yaml:37: spec.allow.jurisdictions[1]: 'EUU' is not a known jurisdiction (did you mean 'EU'?)"
    ]


def test_every_problem_is_reported_one_per_line() -> None:
    bad_site = SITE.replace("count: 4", "count: -1").replace("memory: 24GB", "memory: 24").replace(
        "gpuType: L4", "gpuTyp: L4")
    text = docs(bad_site, MODEL, POLICY.replace("dataClass", "dataclass"), PRIORITY, service())
    lines = problems_of(text)
    joined = "\n".join(lines)
    assert "policies/eu.yaml:12: spec.gpuPools[0].gpuTyp: unknown field 'gpuTyp' (did you mean 'gpuType'?)" in lines
    assert "policies/eu.yaml:12: spec.gpuPools[0].gpuType: required field is missing" not in lines  # reported at pool
    assert "spec.gpuPools[0].count: Input should be greater than or equal to 1" in joined
    assert "policies/eu.yaml:14: spec.gpuPools[0].memory: expected a memory size with its unit" in joined
    assert "unknown field 'dataclass' (did you mean 'dataClass'?)" in joined
    assert len(lines) >= 5
    assert all(line.startswith("policies/eu.yaml:") for line in lines)


def test_yaml_syntax_error_names_the_line() -> None:
    lines = problems_of("kind: Site\nmetadata: {name: x\nspec: [\n")
    assert len(lines) == 1 and lines[0].startswith("policies/eu.yaml:") and "YAML syntax error" in lines[0]


def test_duplicate_keys_and_names() -> None:
    dup_key = PRIORITY.replace("value: 1000", "value: 1000\n  value: 5")
    lines = problems_of(docs(SITE, MODEL, POLICY, dup_key, PRIORITY, service()))
    assert any("spec.value: duplicate key 'value' (first at line" in line for line in lines)
    assert any("metadata.name: duplicate PriorityClass name 'interactive' (first defined at policies/eu.yaml:" in line
               for line in lines)


def test_norway_problem_has_a_hint() -> None:
    lines = problems_of(SITE.replace('country: "DE"', "country: NO"))
    assert any('spec.country: expected an ISO 3166 country code, got boolean false' in line and 'quote it' in line
               for line in lines)


def test_unknown_kind_and_api_version() -> None:
    lines = problems_of(docs(PRIORITY.replace("kind: PriorityClass", "kind: PriorityClas"),
                             PRIORITY.replace("v1alpha1", "v1beta9")))
    assert any("kind: 'PriorityClas' is not a known kind (did you mean 'PriorityClass'?)" in line for line in lines)
    assert any("apiVersion: 'fleet.edge/v1beta9' is not one of fleet.edge/v1alpha1" in line for line in lines)


def test_cross_resource_references() -> None:
    lines = problems_of(docs(SITE, MODEL, POLICY, PRIORITY,
                             service(model="asistant", dataClass="personal-xx", priorityClass="interactiv")))
    joined = "\n".join(lines)
    assert "spec.model: 'asistant' is not a known Model (did you mean 'assistant'?)" in joined
    assert "spec.priorityClass: 'interactiv' is not a known PriorityClass (did you mean 'interactive'?)" in joined
    assert "spec.dataClass: data class 'personal-xx' has no ResidencyPolicy (fail-closed" in joined
    lines = problems_of(docs(SITE, MODEL, POLICY, PRIORITY, service(version="v9")))
    assert any("spec.version: model 'assistant' has no version 'v9' (it has v3)" in line for line in lines)


def test_demand_no_site_may_legally_serve_names_the_policy() -> None:
    lines = problems_of(docs(SITE, MODEL, POLICY.replace("[EU, EEA]", "[US]"), PRIORITY, service()))
    assert len(lines) == 1
    assert "spec.demand[0].region: no site can legally serve demand from 'eu-central' for data class 'personal-eu'" in lines[0]
    assert "ResidencyPolicy 'eu' forbids all 1 site(s)" in lines[0]


def test_impossible_slo() -> None:
    lines = problems_of(docs(SITE, MODEL, POLICY, PRIORITY, service(tpot="10ms")))
    assert any("spec.slo: impossible SLO" in line and "TPOT at batch 1 is 27ms > tpotP95 10ms" in line for line in lines)
    lines = problems_of(docs(SITE, MODEL, POLICY, PRIORITY, service(ttft="100ms")))
    assert any("spec.slo: impossible SLO" in line and "prefill" in line for line in lines)


def test_policy_that_allows_nothing_is_an_error() -> None:
    empty = POLICY.replace("  allow:\n    jurisdictions: [EU, EEA]\n", "")
    lines = problems_of(docs(SITE, MODEL, empty, PRIORITY))
    assert any("allow is empty, so the policy allows no site (fail-closed)" in line for line in lines)


def test_recursive_alias_is_a_problem_not_a_crash() -> None:
    lines = problems_of("a: &x [*x]\n")
    assert any("recursive YAML alias" in line for line in lines)


def test_directory_loading_and_no_partial_result(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(docs(SITE, MODEL))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text(docs(POLICY, PRIORITY, service()))
    bundle = load_bundle([tmp_path])
    assert set(bundle.sites) == {"fra-1"} and set(bundle.services) == {"chat"}
    (tmp_path / "sub" / "c.yaml").write_text(PRIORITY.replace("value: 1000", "value: lots").replace("interactive", "x"))
    with pytest.raises(PolicyError) as info:
        load_bundle([tmp_path])
    assert [p.file for p in info.value.problems] == [str(tmp_path / "sub" / "c.yaml")]
    assert info.value.problems[0].line == 6 and info.value.problems[0].path == "spec.value"


def test_missing_path() -> None:
    with pytest.raises(PolicyError, match="no such file or directory"):
        load_bundle(["/nonexistent/policies"])
