"""Effective limits: the tightest of the absolute and clinical tiers, with provenance."""

from __future__ import annotations

from dataclasses import dataclass

from controller.profile import Profile
from controller.profile_sections import Bound


@dataclass(frozen=True)
class Side:
    value: float
    source: str
    """Which limit set this side: 'absolute', 'clinical' or 'clinical (cold)'."""


@dataclass(frozen=True)
class EffectiveBound:
    low: Side | None
    high: Side | None

    def admits(self, value: float) -> bool:
        return (self.low is None or value >= self.low.value) and \
            (self.high is None or value <= self.high.value)

    def text(self) -> str:
        lo = f"{self.low.value:g}" if self.low else ""
        hi = f"{self.high.value:g}" if self.high else ""
        return f"{lo}..{hi}"


def active_regimes(profile: Profile, values: dict[str, float | str]) -> list[str]:
    """Regimes whose condition holds for these parameter values."""
    out = []
    for name, regime in profile.limits.regimes.items():
        value = values.get(regime.when.parameter)
        if isinstance(value, (int, float)) and regime.when.holds(float(value)):
            out.append(name)
    return out


def effective_bound(profile: Profile, name: str, regimes: list[str]) -> EffectiveBound | None:
    """Tightest bound on `name` over absolute, clinical and the active regimes' limits.

    On a tie the later (more specific) tier is named, so a record shows the clinical
    limit when a clinic has set one equal to the device's.
    """
    tiers: list[tuple[str, Bound]] = []
    lim = profile.limits
    if name in lim.absolute:
        tiers.append(("absolute", lim.absolute[name]))
    if name in lim.clinical:
        tiers.append(("clinical", lim.clinical[name]))
    for r in regimes:
        if name in lim.regimes[r].clinical:
            tiers.append((f"clinical ({r})", lim.regimes[r].clinical[name]))
    if not tiers:
        return None
    low: Side | None = None
    high: Side | None = None
    for source, bound in tiers:
        if bound.min is not None and (low is None or bound.min >= low.value):
            low = Side(bound.min, source)
        if bound.max is not None and (high is None or bound.max <= high.value):
            high = Side(bound.max, source)
    return EffectiveBound(low, high)


def effective_interlocks(profile: Profile, regimes: list[str]) -> dict[str, float]:
    """Interlock thresholds, with those of active regimes taking precedence."""
    out = dict(profile.limits.interlocks)
    for r in regimes:
        out.update(profile.limits.regimes[r].interlocks)
    return out
