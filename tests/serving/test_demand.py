"""Demand at the door, both protocols (issue 12): each request counted once for its service and region of
origin (the gateway's header, else the site's), refused and shed ones included, queued as ``demand``."""

from __future__ import annotations

import grpc
import httpx
import pytest

from protos.fleet.v1 import inference_pb2, inference_pb2_grpc
from tests.serving.conftest import Harness, site_location


def located(h: Harness) -> Harness:
    """The hub's SiteLocation with the demand regions the site serves (as hub.publish builds it)."""
    h.apply("SiteLocation", h.site, {**site_location(h.site, h.country), "region": "eu-central",
                                     "regions": ["eu-central", "eu-west"]})
    return h


def test_http_and_grpc_requests_count_for_their_region_of_origin(harness) -> None:
    h = located(harness(grpc_port=0).standard()).start()
    with httpx.Client(base_url=h.url, timeout=60) as c:
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
        for _ in range(2):
            r = c.post("/v1/completions", json=body,
                       headers={"X-Fleet-Data-Class": "public", "X-Fleet-Origin-Region": "eu-west"})
            assert r.status_code == 200, r.text
        assert c.post("/v1/completions", json=body, headers={"X-Fleet-Data-Class": "public"}).status_code == 200
        assert c.post("/v1/completions", json=body, headers={"X-Fleet-Data-Class": "personal-us"}).status_code == 403
        bad = c.post("/v1/completions", json=body,
                     headers={"X-Fleet-Data-Class": "public", "X-Fleet-Origin-Region": "us-east"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_origin_region"
    with grpc.insecure_channel(f"127.0.0.1:{h.serving.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        req = inference_pb2.GenerateRequest(model="tiny", prompt="hi", max_tokens=2, data_class="public")
        assert list(stub.Generate(req, timeout=60, metadata=[("x-fleet-origin-region", "eu-west")]))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(req, timeout=60, metadata=[("x-fleet-origin-region", "eu-west"),
                                                          ("x-fleet-origin-region", "eu-central")]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    h.stop()
    groups = {(g["service"], g["region"]): g for p in h.kinds("demand") for g in p["groups"]}
    west, central = groups["chat", "eu-west"], groups["chat", "eu-central"]
    assert (west["arrivals"], west["measured"], west["errors"]) == (3, 3, 0)
    assert west["promptTokens"] > 0 and west["outputTokens"] == 6
    # own region: one served, one refused by residency, one bad origin header (counted where it arrived)
    assert (central["arrivals"], central["refused"], central["errors"], central["measured"]) == (3, 1, 1, 1)
