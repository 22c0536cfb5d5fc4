"""gRPC ``fleet.v1.Inference/Generate``: the same front door as HTTP, streamed as protobuf.

Protobuf stays here: requests become :class:`GenRequest`, domain errors become
status codes (bad input → INVALID_ARGUMENT, unknown model → NOT_FOUND,
residency → PERMISSION_DENIED with the same message as HTTP's 403, shed →
RESOURCE_EXHAUSTED with ``retry-after-s`` trailing metadata, anything else →
INTERNAL after logging). A cancelled call cancels the request in the engine.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from edge_agent.serving.errors import BadRequest, ServingError
from edge_agent.serving.gateway import Gateway
from edge_agent.serving.headers import DATA_CLASS_HEADER, ORIGIN_REGION_HEADER, PRIORITY_HEADER, agree, from_metadata
from edge_agent.serving.models import GenRequest
from edge_agent.serving.telemetry import Outcome
from protos.fleet.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 403: grpc.StatusCode.PERMISSION_DENIED,
          404: grpc.StatusCode.NOT_FOUND, 503: grpc.StatusCode.UNAVAILABLE, 502: grpc.StatusCode.UNAVAILABLE}


def from_proto(req: inference_pb2.GenerateRequest) -> GenRequest:
    return GenRequest(prompt=req.prompt, max_tokens=req.max_tokens or 16, temperature=float(req.temperature),
                      top_p=float(req.top_p) or 1.0, seed=req.seed if req.HasField("seed") else None,
                      ignore_eos=req.ignore_eos)


def status_of(exc: ServingError) -> grpc.StatusCode:
    if exc.code == "overloaded":
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return _CODES.get(exc.status, grpc.StatusCode.INTERNAL)


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Generate(self, request: inference_pb2.GenerateRequest,  # noqa: N802 - gRPC method name
                       context: grpc.aio.ServicerContext) -> AsyncIterator[inference_pb2.GenerateResponse]:
        try:
            if not request.prompt:
                raise BadRequest("prompt is required", param="prompt")
            meta = list(context.invocation_metadata() or ())
            # Each once, and the request field and the metadata must not disagree (headers.py says why).
            data_class = agree(DATA_CLASS_HEADER, ("the request's data_class", request.data_class),
                               ("the metadata", from_metadata(DATA_CLASS_HEADER, meta)))
            priority = agree(PRIORITY_HEADER, ("the request's priority_class", request.priority_class),
                             ("the metadata", from_metadata(PRIORITY_HEADER, meta)))
            adm = self.gateway.admit(request.model, data_class, priority,
                                     origin=from_metadata(ORIGIN_REGION_HEADER, meta))
            gen = await self.gateway.start(adm, from_proto(request))
        except ServingError as exc:
            if exc.retry_after_s is not None:
                context.set_trailing_metadata((("retry-after-s", str(exc.retry_after_s)),))
            await context.abort(status_of(exc), exc.message)
            return
        outcome: Outcome | None = Outcome.CANCELLED
        recorded = False
        try:
            first = True
            async for piece in gen:
                yield inference_pb2.GenerateResponse(index=piece.index, token_id=piece.token_id or 0,
                                                     text=piece.text, request_id=adm.request_id if first else "")
                first = False
            st = gen.stats
            reason = gen.finish_reason
            if reason not in ("stop", "length"):
                outcome = Outcome.ERROR
                await context.abort(grpc.StatusCode.INTERNAL, f"the request ended with {reason}")
                return
            self.gateway.finish(adm, gen)  # recorded before the last message reaches the client
            recorded = True
            yield inference_pb2.GenerateResponse(
                index=max(0, st.output_tokens - 1), finish_reason=reason, request_id=adm.request_id,
                usage=inference_pb2.Usage(prompt_tokens=st.prompt_tokens, completion_tokens=st.output_tokens,
                                          total_tokens=st.prompt_tokens + st.output_tokens),
                timing=inference_pb2.Timing(ttft_s=st.ttft_s or 0.0, e2e_s=st.e2e_s or 0.0,
                                            queue_s=st.queue_time_s or 0.0, tpot_s=st.tpot_s or 0.0,
                                            gpu_seconds=st.gpu_seconds))
        finally:
            gen.cancel()
            if not recorded:
                self.gateway.finish(adm, gen, outcome)


def add_to_server(server: grpc.aio.Server, gateway: Gateway) -> None:
    inference_pb2_grpc.add_InferenceServicer_to_server(InferenceService(gateway), server)
