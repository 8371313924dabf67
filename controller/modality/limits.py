"""Effective limits: the tightest of ceiling, absolute and clinical tiers, with provenance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controller.modality.ceilings import ceiling_regimes, ceilings_for, limit_ceilings
from controller.profiles.model import Profile
from controller.profiles.sections import Bound


@dataclass(frozen=True)
class Side:
    value: float
    source: str
    """Which limit set this side: 'ceiling', 'ceiling (cold)', 'absolute', 'clinical'
    or 'clinical (cold)'."""


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
    """Regimes of the profile whose condition holds for these parameter values."""
    out = []
    for name, regime in profile.limits.regimes.items():
        value = values.get(regime.when.parameter)
        if isinstance(value, (int, float)) and regime.when.holds(float(value)):
            out.append(name)
    return out


def active_ceiling_regimes(profile: Profile, values: dict[str, float | str]) -> list[str]:
    """Code regimes (ceilings.py: cold) that hold, whatever the profile's regimes say."""
    return ceiling_regimes(profile.modality, values)


def effective_bound(profile: Profile, name: str, regimes: Sequence[str],
                    code_regimes: Sequence[str] = ()) -> EffectiveBound | None:
    """Tightest bound on `name` over ceiling, absolute, clinical and active regimes' limits.

    `regimes` are the profile's active regimes, `code_regimes` the ceiling table's
    (active_ceiling_regimes). On a tie the later (more specific) tier is named, so a
    record shows the clinical limit when a clinic has set one equal to the ceiling or
    the device's; a ceiling is named only when it is strictly the tightest.
    """
    tiers: list[tuple[str, Bound | None]] = [
        (src, Bound.model_construct(min=c.min, max=c.max))
        for src, c in limit_ceilings(profile.modality, name, tuple(code_regimes))]
    lim = profile.limits
    if name in lim.absolute:
        tiers.append(("absolute", lim.absolute[name]))
    if name in lim.clinical:
        tiers.append(("clinical", lim.clinical[name]))
    for r in regimes:
        regime = lim.regimes.get(r)
        if regime is not None and name in regime.clinical:
            tiers.append((f"clinical ({r})", regime.clinical[name]))
    low: Side | None = None
    high: Side | None = None
    for source, bound in tiers:
        if bound is None:
            continue
        if bound.min is not None and (low is None or bound.min >= low.value):
            low = Side(bound.min, source)
        if bound.max is not None and (high is None or bound.max <= high.value):
            high = Side(bound.max, source)
    if low is None and high is None:
        return None
    return EffectiveBound(low, high)


def effective_interlocks(profile: Profile, regimes: Sequence[str]) -> dict[str, float]:
    """Interlock thresholds: active regimes take precedence; never past a ceiling.

    An interlock the ceiling table names applies even when the profile lacks it.
    """
    out = dict(profile.limits.interlocks)
    for r in regimes:
        regime = profile.limits.regimes.get(r)
        if regime is not None:
            out.update(regime.interlocks)
    for name, ceiling in ceilings_for(profile.modality).interlocks.items():
        value = out.get(name)
        if ceiling.max is not None:
            out[name] = ceiling.max if value is None else min(value, ceiling.max)
        if ceiling.min is not None:
            out[name] = ceiling.min if value is None else max(out[name], ceiling.min)
    return out
