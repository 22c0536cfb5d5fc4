"""The data class and priority class of a request mean one thing on both protocols (issue 10, item 5).

A US site once served ``public`` then ``personal-de`` sent as two headers (HTTP kept the first value);
gRPC read the last. Now a repeated, comma-joined or conflicting class is a bad request on both paths.
"""

from __future__ import annotations

import grpc
import httpx
import pytest

from edge_agent.serving import headers
from edge_agent.serving.errors import BadRequest
from protos.fleet.v1 import inference_pb2, inference_pb2_grpc
from tests.serving.conftest import Harness

BODY = {"model": "tiny", "prompt": "The agent serves", "max_tokens": 2, "temperature": 0}


@pytest.fixture
def us_site(harness) -> Harness:
    return harness(site="iad-1", country="US", jurisdiction="US", grpc_port=0).standard().start()


def post(h: Harness, hdrs: list[tuple[str, str]], body: dict = BODY) -> httpx.Response:
    with httpx.Client(base_url=h.url) as c:
        return c.post("/v1/completions", json=body, headers=hdrs)


@pytest.mark.parametrize("hdrs", [
    [("X-Fleet-Data-Class", "public"), ("X-Fleet-Data-Class", "personal-de")],
    [("X-Fleet-Data-Class", "personal-de"), ("X-Fleet-Data-Class", "public")],
    [("X-Fleet-Data-Class", "public, personal-de")],
    [("X-Fleet-Data-Class", "public"), ("X-Fleet-Data-Class", "public")],
], ids=["public-first", "public-last", "comma-joined", "same-twice"])
def test_http_refuses_an_ambiguous_data_class_with_400(us_site: Harness, hdrs) -> None:
    r = post(us_site, hdrs)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "ambiguous_data_class"
    assert err["param"] == "X-Fleet-Data-Class" and "once with one value" in err["message"]
    assert post(us_site, [("X-Fleet-Data-Class", "public")]).status_code == 200  # one value is served


@pytest.mark.parametrize(("hdrs", "body"), [
    ([("X-Fleet-Priority-Class", "interactive"), ("X-Fleet-Priority-Class", "background")], BODY),
    ([("X-Fleet-Priority-Class", "interactive,background")], BODY),
    ([("X-Fleet-Priority-Class", "interactive")], {**BODY, "priority": "background"}),
], ids=["repeated", "comma-joined", "header-vs-body"])
def test_http_refuses_an_ambiguous_priority_class(us_site: Harness, hdrs, body) -> None:
    r = post(us_site, [("X-Fleet-Data-Class", "public"), *hdrs], body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "ambiguous_priority_class"


@pytest.mark.parametrize(("field", "metadata"), [
    ("", (("x-fleet-data-class", "personal-de"), ("x-fleet-data-class", "public"))),
    ("", (("x-fleet-data-class", "public"), ("x-fleet-data-class", "personal-de"))),
    ("", (("x-fleet-data-class", "personal-de,public"),)),
    ("public", (("x-fleet-data-class", "personal-de"),)),
    ("personal-de", (("x-fleet-data-class", "public"),)),
], ids=["public-last", "public-first", "comma-joined", "field-vs-metadata", "metadata-vs-field"])
def test_grpc_refuses_an_ambiguous_data_class_with_invalid_argument(us_site: Harness, field, metadata) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{us_site.serving.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        req = inference_pb2.GenerateRequest(model="tiny", prompt="hi", max_tokens=2, data_class=field)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(req, metadata=metadata, timeout=60))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "x-fleet-data-class" in err.value.details().lower()
        # one class, once, in either place, is served
        ok = inference_pb2.GenerateRequest(model="tiny", prompt="hi", max_tokens=2)
        assert list(stub.Generate(ok, metadata=(("x-fleet-data-class", "public"),), timeout=60))[-1].finish_reason


def test_grpc_refuses_conflicting_priority_classes(us_site: Harness) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{us_site.serving.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        req = inference_pb2.GenerateRequest(model="tiny", prompt="hi", max_tokens=2, data_class="public",
                                            priority_class="interactive")
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(req, metadata=(("x-fleet-priority-class", "background"),), timeout=60))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_single_and_agree_are_strict() -> None:
    assert headers.single(headers.DATA_CLASS_HEADER, []) is None
    assert headers.single(headers.DATA_CLASS_HEADER, ["public"]) == "public"
    for values in (["a", "b"], ["a", "a"], ["a,b"], ["a, a"]):
        with pytest.raises(BadRequest):
            headers.single(headers.DATA_CLASS_HEADER, values)
    assert headers.agree(headers.DATA_CLASS_HEADER, ("x", "a"), ("y", None)) == "a"
    assert headers.agree(headers.DATA_CLASS_HEADER, ("x", "a"), ("y", "a")) == "a"
    with pytest.raises(BadRequest, match="x says 'a' but y says 'b'"):
        headers.agree(headers.DATA_CLASS_HEADER, ("x", "a"), ("y", "b"))
