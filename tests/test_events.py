"""``GrowthEvent``: the one record of a growth, and its dict form in existing files."""

from __future__ import annotations

import json

import pytest

from progrow.events import GrowthEvent, events_from_dicts

#: An event as checkpoints and summary.json files written before the typed record hold it.
STORED = {
    "stage": 1,
    "step": 8,
    "loss_before": 5.25,
    "loss_after": 5.25,
    "loss_delta": 0.0,
    "params_before": 11300,
    "params": 14960,
    "sizes": {"d_mlp": 20, "n_heads": 3, "d_v": 4, "d_qk": 5, "d_model": 12, "n_layers": 3},
    "seconds": 0.012,
    "flops": 1.5e9,
}


def test_stored_events_load_and_keep_their_schema() -> None:
    event = GrowthEvent.from_dict(json.loads(json.dumps(STORED)))
    assert (event.stage, event.step, event.loss_delta, event.sizes["n_layers"]) == (1, 8, 0.0, 3)
    assert event.to_dict() == STORED  # same keys, same values: old readers keep working
    assert events_from_dicts([STORED, STORED]) == [event, event]
    assert events_from_dicts(None) == []


def test_bad_events_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"unknown growth event field\(s\) \['loss'\]"):
        GrowthEvent.from_dict({**STORED, "loss": 1.0})
    with pytest.raises(ValueError, match=r"loss_delta=1\.0 is not loss_after - loss_before"):
        GrowthEvent.from_dict({**STORED, "loss_delta": 1.0})


def test_delta_from_the_losses_or_alone() -> None:
    assert GrowthEvent(stage=0, step=3, loss_before=2.0, loss_after=1.5).loss_delta == -0.5
    logged = GrowthEvent(stage=0, step=3, loss_delta=1e-6)  # a CSV log has only the delta
    assert logged.loss_before is None and logged.loss_delta == 1e-6


def test_an_event_with_a_nan_loss_survives_its_checkpoint() -> None:
    # A diverged probe loss is recorded (on_loss_jump="warn"/"ignore"); the run must resume.
    event = GrowthEvent(stage=0, step=3, loss_before=2.0, loss_after=float("nan"))
    stored = json.loads(json.dumps(event.to_dict()))
    loaded = GrowthEvent.from_dict(stored)
    assert loaded.loss_after != loaded.loss_after and loaded.loss_delta != loaded.loss_delta
    with pytest.raises(ValueError, match=r"loss_delta=1\.0 is not"):
        GrowthEvent.from_dict({**stored, "loss_delta": 1.0})
