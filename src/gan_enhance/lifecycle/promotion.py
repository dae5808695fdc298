"""Promotion policy: the challenger replaces the champion only when params.promote says it is better, measured
with the same evaluation protocol. Every decision is recorded on the version (tags promotion.*, and a dated line
in its description); `rollback` gives champion back to the version that held it before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from gan_enhance.config import Params, PromoteParams
from gan_enhance.lifecycle.errors import RegistryError
from gan_enhance.lifecycle.registry import (
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    ROLLED_BACK,
    ROLLED_BACK_TAG,
    champion_history,
    check_artifacts,
    client_for,
    get_version,
    record_decision,
    registered_model_name,
    require_alias,
    version_by_alias,
    version_metrics,
    version_protocol,
)

HISTORY_KEPT = 100


@dataclass(frozen=True)
class Candidate:
    """What the policy needs to know about a version."""

    version: str
    metrics: dict[str, float]
    protocol: dict[str, Any] | None

    @classmethod
    def of(cls, version: ModelVersion) -> Candidate:
        return cls(str(version.version), version_metrics(version), version_protocol(version))


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class Outcome:
    """verdict: promoted, forced, refused or unchanged (promote); rolled_back (rollback)."""

    verdict: str
    model_name: str
    version: str
    champion: str | None
    reason: str


def _num(value: float) -> str:
    return f"{value:.6g}"


def protocol_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """'key: a vs b' for every protocol entry that differs."""
    return [f"{key}: {a.get(key)!r} vs {b.get(key)!r}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def decide(challenger: Candidate, champion: Candidate | None, policy: PromoteParams) -> Decision:
    """The policy, on plain numbers: first model wins; else same protocol, better primary, guard within tolerance."""
    primary, guard = policy.primary_metric, policy.guard_metric
    if primary not in challenger.metrics:
        return Decision(False, f"version {challenger.version} carries no metric '{primary}' (tag metric.{primary})")
    # tasks whose evaluation reports no guard metric (translation and generation: FID/KID only) are judged on the
    # primary metric alone; a guard reported by one version and not the other is a mismatch
    guarded = guard in challenger.metrics
    unguarded = "" if guarded else f"; no '{guard}' in this task's evaluation, so no guard"
    shown = f"{primary} {_num(challenger.metrics[primary])}" + (
        f", {guard} {_num(challenger.metrics[guard])}" if guarded else unguarded
    )
    if champion is None:
        return Decision(True, f"first champion ({shown})")
    if primary not in champion.metrics:
        return Decision(False, f"champion version {champion.version} carries no metric '{primary}'")
    if guarded != (guard in champion.metrics):
        holder, other = (challenger, champion) if guarded else (champion, challenger)
        return Decision(
            False,
            f"version {holder.version} carries '{guard}' but version {other.version} does not, so they cannot be "
            "compared; evaluate both the same way",
        )
    if challenger.protocol is None or champion.protocol is None:
        missing = challenger.version if challenger.protocol is None else champion.version
        return Decision(False, f"version {missing} carries no evaluation protocol, so the two cannot be compared")
    differences = protocol_differences(challenger.protocol, champion.protocol)
    if differences:
        return Decision(
            False,
            f"evaluation protocols differ from champion version {champion.version}'s ({'; '.join(differences)}); "
            "evaluate both the same way to compare them",
        )
    ours, theirs = challenger.metrics[primary], champion.metrics[primary]
    better = ours < theirs if policy.primary_direction == "lower" else ours > theirs
    if not better:
        return Decision(
            False,
            f"{primary} {_num(ours)} is not {policy.primary_direction} than champion version "
            f"{champion.version}'s {_num(theirs)}",
        )
    if not guarded:
        return Decision(
            True, f"{primary} {_num(ours)} beats champion version {champion.version}'s {_num(theirs)}{unguarded}"
        )
    ours_guard, theirs_guard = challenger.metrics[guard], champion.metrics[guard]
    loss = theirs_guard - ours_guard if policy.guard_direction == "higher" else ours_guard - theirs_guard
    if loss > policy.guard_tolerance + 1e-12:
        return Decision(
            False,
            f"{primary} {_num(ours)} beats {_num(theirs)}, but {guard} {_num(ours_guard)} loses {_num(loss)} against "
            f"champion version {champion.version}'s {_num(theirs_guard)}, more than the tolerance "
            f"{_num(policy.guard_tolerance)}",
        )
    return Decision(
        True,
        f"{primary} {_num(ours)} beats champion version {champion.version}'s {_num(theirs)}; {guard} "
        f"{_num(ours_guard)} vs {_num(theirs_guard)}, within the tolerance {_num(policy.guard_tolerance)}",
    )


def _checked(client: MlflowClient, name: str, version: str, champion: str | None) -> None:
    try:
        check_artifacts(client, name, version)
    except RegistryError as exc:
        stays = f"version {champion}" if champion else "no version"
        raise RegistryError(f"{exc}; '{CHAMPION}' stays on {stays}") from exc


def promote(params: Params, version: str | None = None, force: bool = False) -> Outcome:
    """Judge the challenger (or `version`) against the champion; move champion only when it wins, or on force."""
    name = registered_model_name(params)
    client = client_for(params.tracking.uri)
    challenger = get_version(client, name, version) if version else require_alias(client, name, CHALLENGER)
    champion = version_by_alias(client, name, CHAMPION)
    ours, before = str(challenger.version), str(champion.version) if champion else None
    if before == ours:
        return Outcome("unchanged", name, ours, before, f"version {ours} already holds '{CHAMPION}'")

    if ROLLED_BACK_TAG in challenger.tags:
        decision = Decision(False, f"version {ours} was rolled back ({challenger.tags[ROLLED_BACK_TAG]})")
    else:
        decision = decide(Candidate.of(challenger), Candidate.of(champion) if champion else None, params.promote)
    verdict = "promoted" if decision.promote else "forced" if force else "refused"
    reason = f"forced over the policy, which said: {decision.reason}" if verdict == "forced" else decision.reason
    if verdict == "refused":
        record_decision(client, challenger, verdict, reason)
        return Outcome(verdict, name, ours, before, reason)

    try:
        _checked(client, name, ours, before)
    except RegistryError as exc:
        record_decision(client, challenger, "refused", str(exc))
        raise
    history = champion_history(client, name)
    if before and (not history or history[-1] != before):  # champion was set by hand (UI) since the last promote
        history.append(before)
    history.append(ours)
    client.set_registered_model_alias(name, CHAMPION, ours)
    if CHALLENGER in challenger.aliases:  # it no longer waits to be judged
        client.delete_registered_model_alias(name, CHALLENGER)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_KEPT:]))
    record_decision(client, challenger, verdict, reason)
    if ROLLED_BACK_TAG in challenger.tags:
        client.delete_model_version_tag(name, ours, ROLLED_BACK_TAG)
    if before:
        client.set_model_version_tag(name, before, "promotion.replaced_by", ours)
    return Outcome(verdict, name, ours, ours, reason)


def rollback(params: Params) -> Outcome:
    """Give champion back to the version that held it before the current one."""
    name = registered_model_name(params)
    client = client_for(params.tracking.uri)
    current = require_alias(client, name, CHAMPION)
    ours = str(current.version)
    history = champion_history(client, name)
    while history and history[-1] == ours:
        history.pop()
    if not history:
        raise RegistryError(
            f"registered model '{name}' has no earlier champion to roll back to; version {ours} was the first"
        )
    previous = history[-1]
    _checked(client, name, previous, ours)
    client.set_registered_model_alias(name, CHAMPION, previous)
    if version_by_alias(client, name, CHALLENGER) is None:  # back to waiting, where promotion took it from
        client.set_registered_model_alias(name, CHALLENGER, ours)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    reason = f"'{CHAMPION}' returned from version {ours} to version {previous}"
    record_decision(client, current, ROLLED_BACK, reason)
    client.set_model_version_tag(name, ours, ROLLED_BACK_TAG, reason)
    record_decision(client, get_version(client, name, previous), "restored", reason)
    return Outcome(ROLLED_BACK, name, ours, previous, reason)
