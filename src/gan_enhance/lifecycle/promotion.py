"""Promotion policy: the challenger replaces the champion only when a paired test says it is better.

The test runs on the evaluation evidence each version carries (lineage/evidence.npz: per-image values and the
Inception features of its crops): the difference challenger - champion on the primary metric, with its interval
at promote.confidence, must lie entirely on the better side (the same images pair image by image, the same crops
crop by crop); the guard metric may lose at most guard_tolerance (its interval is reported); the protocols must
match (the crop seed aside). With promote.require_baseline_win, a version must also beat its task's classical baseline
on the primary metric, with significance, before it can become champion, the first one included. Every decision
is recorded on the version (tags promotion.*, and a dated line in its description); `rollback` gives champion back
to the version that held it before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from gan_enhance.config import Params, PromoteParams
from gan_enhance.evaluation.evidence import Evidence
from gan_enhance.evaluation.report import MODEL, protocol_differences
from gan_enhance.evaluation.uncertainty import Measured, difference
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
    fetch_evidence,
    get_version,
    record_decision,
    registered_model_name,
    require_alias,
    version_by_alias,
    version_protocol,
)
from gan_enhance.metric_facts import metric
from gan_enhance.tasks import build_task

HISTORY_KEPT = 100
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Candidate:
    """What the policy needs to know about a version: its evaluation protocol and evidence."""

    version: str
    protocol: dict[str, Any] | None
    evidence: Evidence | None

    @classmethod
    def of(cls, client: MlflowClient, version: ModelVersion) -> Candidate:
        number = str(version.version)
        return cls(number, version_protocol(version), fetch_evidence(client, version.name, number))


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


@dataclass(frozen=True)
class Policy:
    """promote.* with what the tests need: the task's classical baseline and the bootstrap resamples."""

    rules: PromoteParams
    baseline: str
    resamples: int


def _missing_evidence(version: str) -> str:
    return (
        f"version {version} carries no evaluation evidence (lineage/evidence.npz, which versions registered before "
        "promotion on evidence lack), so it cannot be tested; re-run `dvc repro` to register it again, or --force"
    )


def decide(challenger: Candidate, champion: Candidate | None, policy: Policy) -> Decision:
    """The policy on two versions' evidence: the baseline gate, then the paired test on the primary metric
    against the champion, then the guard."""
    rules = policy.rules
    primary, guard = metric(rules.primary_metric), metric(rules.guard_metric)
    if challenger.evidence is None:
        return Decision(False, _missing_evidence(challenger.version))
    ours = Measured.of(challenger.evidence)
    measured = challenger.evidence.metrics(MODEL)
    if primary.name not in measured:
        return Decision(False, f"version {challenger.version}'s evaluation has no {primary.label} ({primary.name})")

    def test(a: Measured, b: Measured, method_b: str, name: str) -> Any:
        return difference(a, MODEL, b, method_b, name, rules.confidence, policy.resamples, BOOTSTRAP_SEED)

    gate = ""
    if rules.require_baseline_win:
        if policy.baseline not in challenger.evidence.methods:
            return Decision(False, f"version {challenger.version}'s evaluation has no '{policy.baseline}' baseline")
        beaten = test(ours, ours, policy.baseline, primary.name)
        if not beaten.significantly_better:
            return Decision(
                False,
                f"does not beat its classical baseline {policy.baseline} with significance: {beaten.text()}; "
                f"registered, but not made champion (promote.require_baseline_win; --force overrides)",
            )
        gate = f"; beats {policy.baseline}: {beaten.text()}"
    if champion is None:
        return Decision(True, f"first champion{gate or ' (baseline gate off)'}")
    if champion.evidence is None:
        return Decision(False, _missing_evidence(champion.version))
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
    theirs = Measured.of(champion.evidence)
    if primary.name not in champion.evidence.metrics(MODEL):
        return Decision(False, f"champion version {champion.version}'s evaluation has no {primary.label}")
    better = test(ours, theirs, MODEL, primary.name)
    if not better.significantly_better:
        return Decision(
            False, f"{better.text()} against champion version {champion.version}: not significant, champion kept"
        )
    verdict = f"{better.text()} against champion version {champion.version}: significantly better"
    guarded = guard.name in measured and guard.name in champion.evidence.metrics(MODEL)
    if not guarded:
        return Decision(True, f"{verdict}; no {guard.label} in this task's evaluation, so no guard{gate}")
    held = test(ours, theirs, MODEL, guard.name)
    # the guard bounds the estimated loss; requiring its interval to stay within the tolerance (non-inferiority)
    # would, over the default split's 4 test images (t with 3 degrees of freedom), refuse nearly every challenger,
    # PSNR gains included
    loss = -guard.gain(held.a, held.b)
    tolerance = f"{rules.guard_tolerance:g}{guard.unit}"
    if loss > rules.guard_tolerance + 1e-12:
        return Decision(
            False,
            f"{verdict}, but {held.text()}: it loses {loss:{guard.fmt}}{guard.unit}, more than the tolerance "
            f"{tolerance}; champion kept",
        )
    return Decision(True, f"{verdict}; {held.text()}, within the tolerance {tolerance}{gate}")


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
        baseline = build_task(params.task).classical_baseline
        policy = Policy(params.promote, baseline, params.evaluate.bootstrap)
        theirs = Candidate.of(client, champion) if champion else None
        decision = decide(Candidate.of(client, challenger), theirs, policy)
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
