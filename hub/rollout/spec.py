"""What ``fleet rollout start`` asks for, parsed from the CLI's strings with precise errors.

::

    fleet rollout start SERVICE --to VERSION [--strategy waves|canary]
        [--waves 1,10%,50%,100%] [--max-unavailable N|N%] [--max-failures N]
        [--min-success-time 10m] [--progress-deadline 30m]
        [--schedule 'CRON' --window 2h]

Field values are accepted as the CLI writes them (``"10m"``, ``"25%"``,
``"1,10%,50%,100%"``) and held parsed (seconds, :class:`Size`). The model
dumps back to the same strings (``model_dump(mode="json")``), so a stored
spec loads again through the same parsers.

Safe defaults: the first wave is one site; at most one site is updating
at a time; a site may be unavailable because of the rollout only while it
applies; 100 % unavailability is refused unless explicitly allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal, Optional

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from hub.policy.units import duration_seconds, format_duration  # noqa: F401 - format_duration: the one formatter, re-exported

def parse_duration(value: object) -> float:
    """``'10m'``, ``'2h'``, ``'90s'``, ``'1h30m'``, ``'1d'`` -> seconds (the one grammar,
    :func:`hub.policy.units.duration_seconds`; ``10min`` works too). Bare numbers and zero are refused."""
    if isinstance(value, bool) or isinstance(value, (int, float)):
        raise ValueError(f"expected a duration with its unit such as '10m' (bare number {value!r} is ambiguous; "
                         "units: ms, s, m, h, d)")
    if not isinstance(value, str):
        raise ValueError(f"expected a duration string such as '10m', got {type(value).__name__}")
    seconds = duration_seconds(value, "10m")
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return seconds


@dataclass(frozen=True)
class Size:
    """A number of sites, absolute (``3``) or a share of the eligible sites (``25%``)."""

    count: Optional[int] = None
    percent: Optional[float] = None

    def resolve(self, total: int, round_up: bool = True) -> int:
        """Sites for ``total`` eligible sites: percentages round up (``round_up``) or down, counts are capped."""
        if self.count is not None:
            return min(self.count, total)
        exact = (self.percent or 0.0) * total / 100.0
        # 1e-9: 30 % of 10 is 3, not 4, despite binary floating point.
        return min(total, math.ceil(exact - 1e-9) if round_up else math.floor(exact + 1e-9))

    @property
    def is_full(self) -> bool:
        return self.percent is not None and self.percent >= 100.0

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


def parse_size(value: object, what: str = "") -> Size:
    """``3`` / ``'3'`` -> 3 sites; ``'25%'`` -> 25 %. Zero and over-100 % are refused."""
    if isinstance(value, Size):
        return value
    pre = f"{what}: " if what else ""
    if isinstance(value, bool):
        raise ValueError(f"{pre}expected a site count such as 2 or a percentage such as '25%', got {value!r}")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ValueError(f"{pre}expected a site count such as 2 or a percentage such as '25%', "
                         f"got {type(value).__name__}")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
    if m:
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise ValueError(f"{pre}{text!r} must be above 0% and at most 100%")
        return Size(percent=pct)
    if re.fullmatch(r"\d+", text):
        n = int(text)
        if n < 1:
            raise ValueError(f"{pre}{text!r} must be at least 1 site")
        return Size(count=n)
    raise ValueError(f"{pre}{text!r} is neither a site count (2) nor a percentage (25%)")


def parse_waves(value: object) -> tuple[Size, ...]:
    """``'1,10%,50%,100%'`` -> cumulative wave targets.

    Targets are cumulative (how many sites run the new version once the wave
    is done), strictly increasing, counts before percentages, ending at 100 %.
    """
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        items = [p.strip() for p in value.split(",")]
    else:
        raise ValueError(f"waves: expected a list such as '1,10%,50%,100%', got {type(value).__name__}")
    if not items or items == [""]:
        raise ValueError("waves: empty; write them like '1,10%,50%,100%'")
    sizes = []
    for i, item in enumerate(items):
        if item == "":
            raise ValueError(f"waves[{i}]: empty entry in {value!r}")
        sizes.append(parse_size(item, f"waves[{i}]"))
    for i in range(1, len(sizes)):
        a, b = sizes[i - 1], sizes[i]
        if a.percent is not None and b.count is not None:
            raise ValueError(f"waves[{i}]: {b} (a site count) after {a} (a percentage): write counts first, "
                             "e.g. '1,3,25%,100%'")
        if (a.count is not None and b.count is not None and b.count <= a.count) or \
                (a.percent is not None and b.percent is not None and b.percent <= a.percent):
            raise ValueError(f"waves[{i}]: {b} is not larger than {a}; waves are cumulative and must increase, "
                             "e.g. '1,10%,50%,100%'")
    if not sizes[-1].is_full:
        raise ValueError(f"waves: the last wave is {sizes[-1]}, it must be 100% so that every site is updated "
                         f"(e.g. '{','.join(map(str, sizes))},100%')")
    return tuple(sizes)


def _check_cron(value: object) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a crontab expression such as '0 2 * * *', got {type(value).__name__}")
    try:
        CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as e:
        raise ValueError(f"{value!r} is not a crontab expression (minute hour day month weekday, in UTC): {e}") \
            from None
    return value.strip()


Seconds = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
SiteSize = Annotated[Size, BeforeValidator(parse_size), PlainSerializer(str, return_type=str)]
Waves = Annotated[
    tuple[Size, ...],
    BeforeValidator(parse_waves),
    PlainSerializer(lambda w: ",".join(map(str, w)), return_type=str),
]
Cron = Annotated[Optional[str], BeforeValidator(_check_cron)]


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        frozen=True,
        arbitrary_types_allowed=True,
    )


class CanaryOptions(_Spec):
    """How the canary wave's new version is compared with the old version on the same sites."""

    sites: SiteSize = Size(count=1)
    """Canary sites, a count (1) or a share ('10%') of the eligible sites. Default: 1."""
    max_ttft_p95_ratio: float = Field(default=1.2, gt=1.0, le=10.0)
    """Fail when the new version's p95 TTFT is significantly above this multiple of the old one's. Default: 1.2."""
    max_itl_p95_ratio: float = Field(default=1.2, gt=1.0, le=10.0)
    """The same for p95 inter-token latency. Default: 1.2."""
    max_error_rate_increase: float = Field(default=0.01, ge=0.0, le=1.0)
    """Fail when the error rate rises significantly by more than this (absolute, 0.01 = 1 point). Default: 0.01."""
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    """Significance level of each comparison (one-sided). Default: 0.05."""
    min_requests: int = Field(default=200, ge=10)
    """Requests each version must have served on the canary sites before comparing. Default: 200."""
    on_breach: Literal["pause", "rollback"] = "rollback"
    """What a failed comparison does. Default: rollback."""


class RolloutSpec(_Spec):
    """A rollout of one service to a new model version across the fleet."""

    service: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Service name. Required."""
    to_version: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Model version to roll out (``--to``). Required."""
    strategy: Literal["waves", "canary"] = "waves"
    """``waves``: an SLO gate after each wave; ``canary``: the first wave is also compared with the old
    version. Default: waves."""
    waves: Waves = (Size(count=1), Size(percent=10), Size(percent=50), Size(percent=100))
    """Cumulative wave targets, e.g. '1,10%,50%,100%'. Default: 1,10%,50%,100%."""
    max_unavailable: SiteSize = Size(count=1)
    """Sites applying the new version at the same time (count, or % of eligible sites rounded down, at
    least 1). Default: 1."""
    allow_full_unavailability: bool = False
    """Allow ``max_unavailable: 100%``. Default: false."""
    max_failures: int = Field(default=1, ge=0, le=10_000)
    """Sites that may fail (unreachable or not applied by the progress deadline) before the breach action.
    Default: 1."""
    min_success_time: Seconds = 600.0
    """How long a wave serves real traffic before its gate is judged, e.g. '10m'. Default: 10m."""
    progress_deadline: Seconds = 1800.0
    """How long a site may take to apply, and a gate to gather enough traffic, e.g. '30m'. Default: 30m."""
    min_requests: int = Field(default=100, ge=1)
    """Requests the updated sites must serve on the new version before the SLO gate is judged. Default: 100."""
    on_breach: Literal["pause", "rollback"] = "pause"
    """What an SLO breach or too many failed sites does. Default: pause."""
    schedule: Cron = None
    """Crontab (UTC) of the windows in which sites may be updated, e.g. '0 2 * * *'. Default: any time."""
    window: Optional[Seconds] = None
    """Length of each scheduled window, e.g. '2h'. Required with ``schedule``."""
    canary: CanaryOptions = CanaryOptions()
    """Canary options (strategy canary only)."""

    @model_validator(mode="after")
    def _cross(self) -> "RolloutSpec":
        if self.max_unavailable.is_full and not self.allow_full_unavailability:
            raise ValueError("max_unavailable: 100% would let every site be updating at once; pass "
                             "--allow-full-unavailability if that is meant, or use e.g. --max-unavailable 25%")
        if self.schedule is not None and self.window is None:
            raise ValueError("window: --schedule needs --window (how long each opening lasts, e.g. --window 2h)")
        if self.window is not None and self.schedule is None:
            raise ValueError("window: --window needs --schedule (when the windows open, e.g. --schedule '0 2 * * *')")
        if self.strategy != "canary" and "canary" in self.model_fields_set:
            raise ValueError("canary: canary options need --strategy canary")
        return self

    # ----------------------------------------------------------- helpers

    def in_window(self, now: datetime) -> bool:
        """True when sites may be updated at ``now`` (always, without a schedule).

        A window is half-open: [fire time, fire time + window).
        """
        if self.schedule is None or self.window is None:
            return True
        trigger = CronTrigger.from_crontab(self.schedule, timezone="UTC")
        opened = trigger.get_next_fire_time(None, now - timedelta(seconds=self.window) + timedelta(microseconds=1))
        return opened is not None and opened <= now

    def next_window(self, now: datetime) -> Optional[datetime]:
        """When the next window opens after ``now`` (None without a schedule)."""
        if self.schedule is None:
            return None
        return CronTrigger.from_crontab(self.schedule, timezone="UTC").get_next_fire_time(None, now)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict in CLI notation (round-trips through :meth:`from_dict`)."""
        return self.model_dump(mode="json", by_alias=True, exclude=None if self.strategy == "canary" else {"canary"})

    @classmethod
    def from_dict(cls, data: dict) -> "RolloutSpec":
        return cls.model_validate(data)


def cli_errors(error: ValidationError) -> list[str]:
    """One line per problem, naming the CLI flag: ``--waves: waves[2]: 5% is not larger than 10%; ...``."""
    out = []
    for e in error.errors():
        loc = [str(p) for p in e["loc"]]
        flag = "--" + "-".join(re.sub(r"(?<!^)(?=[A-Z])", "-", p).replace("_", "-").lower() for p in loc) if loc else ""
        msg = str(e["msg"]).removeprefix("Value error, ")
        out.append(f"{flag}: {msg}" if flag else msg)
    return out
