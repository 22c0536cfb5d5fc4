"""The fleet's request headers, read the same strict way on both protocols.

``X-Fleet-Data-Class`` decides where a request may be processed, so it must
mean one thing. HTTP servers and proxies disagree on a repeated header (some
keep the first value, some the last, some join them with commas): a caller
who sends ``public`` and ``personal-de`` must not be served as whichever one a
layer happened to keep. A class named twice (even the same one twice), in one
comma-joined value, or differently by two sources of one request (gRPC's
``data_class`` field and its metadata; HTTP's priority header and the body's
``priority``) is refused as a bad request. A trusted gateway in front of the
agent strips what its clients sent and sets exactly one value.

``X-Fleet-Origin-Region`` names the demand region a request came from (set by
a gateway that knows where its users are), for the demand the agent reports
to the hub's autoscaler. It is read just as strictly: a request counted in two
regions, or in a region the fleet does not know, would skew the forecast of
both; without it a request counts for the serving site's own region.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_agent.serving.errors import BadRequest

DATA_CLASS_HEADER = "x-fleet-data-class"
PRIORITY_HEADER = "x-fleet-priority-class"
ORIGIN_REGION_HEADER = "x-fleet-origin-region"
_CODES = {DATA_CLASS_HEADER: "ambiguous_data_class", PRIORITY_HEADER: "ambiguous_priority_class",
          ORIGIN_REGION_HEADER: "ambiguous_origin_region"}
_ONE = {ORIGIN_REGION_HEADER: "region of origin"}


def single(name: str, values: Iterable[str]) -> str | None:
    """The one value header ``name`` was sent with, None when absent; BadRequest when repeated or joined."""
    got = [str(v) for v in values]
    if not got:
        return None
    if len(got) > 1 or "," in got[0]:
        shown = ", ".join(repr(v) for v in got)
        raise BadRequest(f"header {_title(name)} must be sent once with one value, got {shown}; "
                         f"a request has exactly one {_ONE.get(name, 'class')}", param=_title(name), code=_CODES.get(name))
    return got[0].strip() or None


def agree(name: str, *sources: tuple[str, str | None]) -> str | None:
    """The value the (where, value) ``sources`` give, None when none does; BadRequest when they differ."""
    given = [(where, v) for where, v in sources if v]
    if len({v for _, v in given}) > 1:
        shown = " but ".join(f"{where} says {v!r}" for where, v in given)
        raise BadRequest(f"conflicting {_title(name)}: {shown}; send one", param=_title(name), code=_CODES.get(name))
    return given[0][1] if given else None


def from_metadata(name: str, metadata: Iterable[tuple[str, object]] | None) -> str | None:
    """:func:`single` over gRPC invocation metadata (keys arrive lower-case)."""
    return single(name, [v.decode() if isinstance(v, bytes) else str(v) for k, v in metadata or () if k == name])


def _title(name: str) -> str:
    return "-".join(p.capitalize() for p in name.split("-"))
