"""Suggestions for unknown names: a family typed alone means its variants (issue 12)."""

from __future__ import annotations

from hub.policy.vocab import KNOWN_GPU_TYPES, did_you_mean, unknown


def test_h100_suggests_the_h100_variants_not_h200() -> None:
    hint = did_you_mean("H100", KNOWN_GPU_TYPES)
    assert "H200" not in hint
    assert "'H100-PCIE'" in hint and "'H100-SXM'" in hint
    assert unknown("H100", "GPU type", KNOWN_GPU_TYPES) == (
        "'H100' is not a known GPU type (did you mean one of 'H100-PCIE', 'H100-SXM'?)")


def test_prefix_before_substring_before_edit_distance() -> None:
    assert did_you_mean("a100", KNOWN_GPU_TYPES) == " (did you mean one of 'A100-40GB', 'A100-80GB'?)"
    assert did_you_mean("ORIN-NANO", KNOWN_GPU_TYPES) == " (did you mean 'JETSON-ORIN-NANO'?)"
    assert did_you_mean("H20", ["H200", "H100-SXM"]) == " (did you mean 'H200'?)"
    assert did_you_mean("L40", KNOWN_GPU_TYPES) == " (did you mean 'L40S'?)"
    assert did_you_mean("H1OO-SXM", KNOWN_GPU_TYPES) == " (did you mean 'H100-SXM'?)"  # typo: edit distance


def test_case_only_difference_and_nothing_close() -> None:
    assert did_you_mean("l40s", KNOWN_GPU_TYPES) == " (did you mean 'L40S'?)"
    assert did_you_mean("TPU-V5", KNOWN_GPU_TYPES) == ""
    assert did_you_mean(42, KNOWN_GPU_TYPES) == ""
