"""Bad input is refused within a bound of work, with file and line (issue 10, item 8).

Nothing here times anything: each test checks *how* the input was refused (the problem's message
and line) and that the expensive step never ran (no node composed or built, the file never read)
or that memory stayed within a bound (tracemalloc counts allocations, deterministically).
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
import yaml

from hub.policy import PolicyError, load_bundle, load_bundle_text
from hub.policy import yamlsrc
from tests.integration.cliharness import fleet

LAUGHS = """\
apiVersion: fleet.edge/v1alpha1
kind: Site
metadata: {name: lol}
spec:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.fixture
def counted(monkeypatch):
    """Counts composed documents and built nodes; building more than 10 000 nodes fails the test at once
    (the old loader expanded the laughs above into 10^9 nodes)."""
    calls = {"compose": 0, "build": 0}
    compose, build = yaml.compose_all, yamlsrc._Builder.build

    def compose_all(*a, **kw):
        calls["compose"] += 1
        return compose(*a, **kw)

    def counting_build(self, node, path):
        calls["build"] += 1
        assert calls["build"] < 10_000, "the loader is expanding aliases"
        return build(self, node, path)

    monkeypatch.setattr(yamlsrc.yaml, "compose_all", compose_all)
    monkeypatch.setattr(yamlsrc._Builder, "build", counting_build)
    return calls


def problems(exc: pytest.ExceptionInfo[PolicyError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_billion_laughs_is_refused_before_anything_expands(counted) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(PolicyError) as info:
            load_bundle_text(LAUGHS, "laughs.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    lines = problems(info)
    assert lines[0] == ("laughs.yaml:6: YAML alias *a is not supported: write the value out (aliases re-use nodes, "
                        "and a few lines of them can expand into gigabytes)")
    assert counted == {"compose": 0, "build": 0}, "refused by the streaming pre-scan, before composing"
    assert peak < 5 * 2**20, f"{peak} bytes allocated"


def test_any_alias_is_refused_with_its_line_and_a_cycle_says_so() -> None:
    with pytest.raises(PolicyError) as info:
        load_bundle_text("a: &x 1\nb: *x\n", "x.yaml")
    assert problems(info) == ["x.yaml:2: YAML alias *x is not supported: write the value out (aliases re-use "
                              "nodes, and a few lines of them can expand into gigabytes)"]
    with pytest.raises(PolicyError, match="recursive YAML alias"):
        load_bundle_text("a: &x [*x]\n")


def test_a_file_of_tens_of_megabytes_is_refused_unread(tmp_path: Path, counted) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(50 * 2**20)  # sparse: 50 MiB without writing them
    tracemalloc.start()
    try:
        with pytest.raises(PolicyError) as info:
            load_bundle([big])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problems(info) == [f"{big}: 50.0 MiB of YAML; a policy file may hold at most 2.0 MiB: split it into "
                              "several files"]
    assert peak < 2**20, "the file was read"
    assert counted["compose"] == 0
    with pytest.raises(PolicyError, match="at most 2.0 MiB"):
        load_bundle_text("#" * (yamlsrc.MAX_FILE_BYTES + 1))


def test_files_together_are_bounded_too(tmp_path: Path) -> None:
    chunk = ("# padding\n" * (yamlsrc.MAX_FILE_BYTES // 10 - 10)).encode()
    for name in ("a.yaml", "b.yaml", "c.yaml"):
        (tmp_path / name).write_bytes(chunk)
    with pytest.raises(PolicyError) as info:
        load_bundle([tmp_path])
    assert problems(info) == [f"{tmp_path / 'c.yaml'}: the files of one apply may hold at most 4.0 MiB of YAML "
                              "together; this one goes past that: apply fewer files at a time"]


def test_deep_nesting_and_too_many_documents_are_refused_with_the_line(counted) -> None:
    deep = "".join(f"{'  ' * i}k{i}:\n" for i in range(100)) + f"{'  ' * 100}v: 1\n"
    with pytest.raises(PolicyError) as info:
        load_bundle_text(deep, "deep.yaml")
    assert problems(info) == ["deep.yaml:65: nested deeper than 64 levels"]
    many = "--- {}\n" * (yamlsrc.MAX_DOCUMENTS + 1)
    with pytest.raises(PolicyError) as info:
        load_bundle_text(many, "many.yaml")
    assert problems(info) == [f"many.yaml:{yamlsrc.MAX_DOCUMENTS + 1}: more than {yamlsrc.MAX_DOCUMENTS} YAML "
                              "documents in one file; split it into several files"]
    assert counted["compose"] == 0


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "   \n\n"])
def test_an_input_without_objects_is_an_error_like_kubectl(text: str, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no objects passed to apply"):
        load_bundle_text(text, "empty.yaml")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "empty.yaml").write_text(text)
    with pytest.raises(PolicyError, match="no objects passed to apply"):
        load_bundle([tmp_path / "d"])


def test_fleet_plan_of_an_empty_file_exits_2_before_connecting(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    proc = fleet(None, "plan", "-f", str(empty), "--hub", "127.0.0.1:1", "--token", "t" * 20, "--insecure")
    assert proc.returncode == 2, proc.stderr
    assert f"{empty}: no objects passed to apply" in proc.stderr and "Traceback" not in proc.stderr
    assert os.path.getsize(empty) == 0
