"""The service state machine: revisions, traffic split, promotion and rollback, with their events."""

from __future__ import annotations

from shoal.control import service_machine as sm
from shoal.policy.rollout import CanaryState, Verdict


def kinds(step: sm.ServiceStep) -> list[str]:
    return [event.kind for event in step.events]


def ready_service() -> sm.ServiceRow:
    row = sm.deploy(sm.ServiceRow("digits", "team-a"), "model-a", 10, 0.0).service
    return sm.loaded(row, "digits-r1", 1.0).service


def test_the_first_revision_becomes_stable_once_loaded() -> None:
    step = sm.deploy(sm.ServiceRow("digits", "team-a"), "model-a", 10, 0.0)
    assert kinds(step) == ["revision-created"]
    assert step.service.phase == "Loading"
    assert step.service.traffic() == {"digits-r1": 100}
    step = sm.loaded(step.service, "digits-r1", 1.0)
    assert kinds(step) == ["revision-ready"]
    assert step.service.phase == "Ready"
    assert step.service.serving == ("digits-r1",)


def test_deploying_the_same_model_again_changes_nothing() -> None:
    row = ready_service()
    step = sm.deploy(row, "model-a", 10, 5.0)
    assert not step.changed
    assert step.service.revisions == row.revisions


def test_a_new_model_is_a_canary_that_gets_its_share_once_ready() -> None:
    step = sm.deploy(ready_service(), "model-b", 10, 5.0)
    row = step.service
    assert row.canary == "digits-r2"
    assert row.traffic() == {"digits-r1": 100}  # not ready: no traffic yet
    assert row.serving == ("digits-r1", "digits-r2")
    step = sm.loaded(row, "digits-r2", 6.0)
    assert kinds(step) == ["revision-ready", "canary-started"]
    assert step.service.traffic() == {"digits-r1": 90, "digits-r2": 10}


def test_a_canary_verdict_promotes_or_rolls_back_with_its_evidence() -> None:
    row = sm.loaded(sm.deploy(ready_service(), "model-b", 25, 5.0).service, "digits-r2", 6.0).service
    evidence = {"canary_errors": 30, "stable_errors": 0}
    back = sm.judged(row, Verdict("rollback", "canary error rate 15%", CanaryState(), evidence))
    assert kinds(back) == ["rolled-back"]
    assert back.events[0].data["canary_errors"] == 30
    assert back.events[0].data["reason"] == "canary error rate 15%"
    assert back.service.revision("digits-r2").phase == "RolledBack"
    assert back.service.traffic() == {"digits-r1": 100}
    assert back.service.serving == ("digits-r1",)
    up = sm.judged(row, Verdict("promote", "healthy for 300 s", CanaryState(6.0), {}))
    assert kinds(up) == ["promoted"]
    assert up.service.stable == "digits-r2" and up.service.canary is None
    assert up.service.revision("digits-r1").phase == "Retired"
    assert up.service.traffic() == {"digits-r2": 100}
    watch = sm.judged(row, Verdict("watch", "healthy for 60 s", CanaryState(6.0), {}))
    assert not watch.changed and watch.service.canary_state == CanaryState(6.0)


def test_a_canary_whose_model_fails_to_load_leaves_traffic_on_the_last_good_revision() -> None:
    row = sm.deploy(ready_service(), "model-broken", 10, 5.0).service
    step = sm.load_failed(row, "digits-r2", "cannot unpickle model.joblib", 6.0)
    assert kinds(step) == ["revision-failed", "rolled-back"]
    assert step.service.revision("digits-r2").reason == "cannot unpickle model.joblib"
    assert step.service.phase == "Ready"
    assert step.service.traffic() == {"digits-r1": 100}


def test_a_first_revision_that_fails_fails_the_service_until_a_new_model_comes() -> None:
    row = sm.deploy(sm.ServiceRow("digits", "team-a"), "bad", 0, 0.0).service
    row = sm.load_failed(row, "digits-r1", "no such file", 1.0).service
    assert row.phase == "Failed" and row.traffic() == {}
    row = sm.deploy(row, "good", 0, 2.0).service
    assert row.stable == "digits-r2" and row.phase == "Loading"


def test_traffic_percent_zero_promotes_as_soon_as_the_new_revision_is_ready() -> None:
    row = sm.deploy(ready_service(), "model-b", 0, 5.0).service
    step = sm.loaded(row, "digits-r2", 6.0)
    assert kinds(step) == ["revision-ready", "promoted"]
    assert step.service.traffic() == {"digits-r2": 100}


def test_a_newer_model_supersedes_a_canary_still_being_judged() -> None:
    row = sm.deploy(ready_service(), "model-b", 10, 5.0).service
    step = sm.deploy(row, "model-c", 10, 6.0)
    assert kinds(step) == ["revision-retired", "revision-created"]
    assert step.service.canary == "digits-r3"
    assert step.service.revision("digits-r2").phase == "Retired"


def test_a_stable_revision_that_never_served_is_replaced_not_canaried() -> None:
    row = sm.deploy(sm.ServiceRow("digits", "team-a"), "model-a", 10, 0.0).service
    step = sm.deploy(row, "model-b", 10, 1.0)
    assert step.service.stable == "digits-r2" and step.service.canary is None


def test_promote_and_abort_by_hand() -> None:
    assert isinstance(sm.promote(ready_service(), 1.0), sm.Refused)
    assert sm.abort(ready_service(), 1.0) == sm.Refused("service digits has no canary to abort")
    loading = sm.deploy(ready_service(), "model-b", 10, 5.0).service
    assert sm.promote(loading, 6.0) == sm.Refused("canary digits-r2 is not ready yet")
    ready = sm.loaded(loading, "digits-r2", 6.0).service
    up = sm.promote(ready, 7.0)
    assert isinstance(up, sm.ServiceStep) and up.service.stable == "digits-r2"
    down = sm.abort(ready, 7.0)
    assert isinstance(down, sm.ServiceStep)
    assert down.service.revision("digits-r2").phase == "RolledBack"
    assert down.events[0].data["reason"] == "aborted by hand"


def test_a_rolled_back_model_is_not_deployed_again_until_the_spec_changes() -> None:
    row = sm.loaded(sm.deploy(ready_service(), "model-b", 10, 5.0).service, "digits-r2", 6.0).service
    row = sm.abort(row, 7.0).service  # type: ignore[union-attr]
    assert not sm.deploy(row, "model-b", 10, 8.0).changed
    assert sm.deploy(row, "model-c", 10, 8.0).service.canary == "digits-r3"
