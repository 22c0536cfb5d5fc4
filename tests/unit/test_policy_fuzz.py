"""Throw generated bad documents at the loader: it either returns a complete
bundle or raises one PolicyError with located problems. Nothing else."""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.policy import Bundle, PolicyError, load_bundle_text
from tests.unit.test_policy_loader import MODEL, POLICY, PRIORITY, SITE, docs, service

VALID = [yaml.safe_load(t) for t in (SITE, MODEL, POLICY, PRIORITY, service())]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["500ms", "24GiB", "$1/h", "NO", "EU", "L4", "-1", "1e999ms", "~", "yes"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw):
    documents = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        doc = documents[draw(st.integers(0, len(documents) - 1))]
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "extra"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
    text = "---\n".join(yaml.safe_dump(d, allow_unicode=True) for d in documents)
    if draw(st.booleans()):  # and sometimes raw damage to the text
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=6)) + text[at:]
    return text


def _check(text: str) -> None:
    try:
        bundle = load_bundle_text(text, "fuzz.yaml")
    except PolicyError as exc:
        assert exc.problems, "a PolicyError always carries problems"
        for problem in exc.problems:
            assert problem.file == "fuzz.yaml" and problem.message and problem.line >= 0
            assert "Traceback" not in problem.message
        return
    assert isinstance(bundle, Bundle)
    # never partial: every document became a resource
    assert len(bundle.resources()) == sum(1 for d in yaml.safe_load_all(text) if d is not None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_documents(text: str) -> None:
    _check(text)


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    _check(text)


def test_valid_base_is_valid() -> None:
    assert len(load_bundle_text(docs(SITE, MODEL, POLICY, PRIORITY, service())).resources()) == 5
