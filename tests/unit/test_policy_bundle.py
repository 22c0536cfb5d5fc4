from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.policy import Bundle, PolicyError, diff, load_bundle
from hub.policy.schema import Service

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle([ROOT / "fleet_configs", ROOT / "policies"])


def test_canonical_json_round_trips_and_is_stable(bundle: Bundle) -> None:
    text = bundle.to_json()
    again = Bundle.from_json(text)
    assert again.to_json() == text
    assert again.digest() == bundle.digest()
    items = json.loads(text)
    assert [i["kind"] for i in items] == sorted((i["kind"] for i in items), key=["Site", "Model", "Service",
                                                "ResidencyPolicy", "PriorityClass"].index)
    site = next(i for i in items if i["metadata"]["name"] == "fra-1")
    assert site["spec"]["gpuPools"][0]["memory"] == "24GB"
    assert site["spec"]["gpuPools"][0]["price"] == "$0.85/h"
    assert site["spec"]["networkLatency"]["eu-central"].endswith("ms")
    assert diff(bundle, again).empty


def test_from_json_validates(bundle: Bundle) -> None:
    items = json.loads(bundle.to_json())
    for item in items:
        if item["kind"] == "Service":
            item["spec"]["model"] = "nope"
    with pytest.raises(PolicyError, match="'nope' is not a known Model"):
        Bundle.from_json(json.dumps(items))


def test_diff_reports_added_removed_and_changed_fields(bundle: Bundle) -> None:
    after = Bundle.from_json(bundle.to_json())
    svc = after.services["assistant-eu"]
    data = svc.model_dump(by_alias=True, mode="json")
    data["spec"]["slo"]["ttftP95"] = "400ms"
    after.services["assistant-eu"] = Service.model_validate(data)
    del after.services["embed-public"]
    del after.priority_classes["batch"]
    change = diff(bundle, after)
    lines = change.lines()
    assert "- Service/embed-public" in lines
    assert "- PriorityClass/batch" in lines
    assert "~ Service/assistant-eu spec.slo.ttftP95: '500ms' -> '400ms'" in lines
    assert len(change.changes) == 3
    assert "+ Service/embed-public" in diff(after, bundle).lines()
