"""The learning-rate schedules: warmup then cosine, or warmup-stable-decay (WSD), as the
LMModule's scheduler applies them, validated up front, and continued exactly on resume."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
from test_configs import compose_train, settings_of

from progrow import LMModule, OptimConfig
from progrow.app import ConfigError
from progrow.app.job import optimizer_and_growth
from progrow.optim import lr_multiplier

TINY = dict(vocab_size=16, max_seq_len=8, d_model=8, d_mlp=8, n_heads=2, d_qk=4, d_v=4)
LR = 1e-2
# 4 warmup steps, 20 in all, the last 5 (a quarter) decaying linearly to 0.1 * LR.
WSD = dict(lr=LR, warmup_steps=4, max_steps=20, schedule="wsd", decay_fraction=0.25)


def scheduled_lrs(optim: dict[str, Any], steps: int) -> list[float]:
    """The LR of each optimizer step, from the module's own configure_optimizers."""
    module = LMModule(TINY, optim)
    configured = module.configure_optimizers()
    opt, sched = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_wsd_values_at_warmup_stable_decay_and_end() -> None:
    lrs = scheduled_lrs(WSD, 21)
    assert lrs[0] == pytest.approx(LR / 4)
    assert lrs[3] == pytest.approx(LR)  # warmup ends at the peak
    assert lrs[4:16] == pytest.approx([LR] * 12)  # stable until the decay starts at 15
    assert lrs[15] == pytest.approx(LR)  # the decay's first step: progress 0
    assert lrs[16] == pytest.approx(LR * (1 - 0.9 * 1 / 5))
    assert lrs[19] == pytest.approx(LR * (1 - 0.9 * 4 / 5))  # the run's last step
    assert lrs[20] == pytest.approx(0.1 * LR)  # the floor, reached at max_steps
    steps = [b - a for a, b in itertools.pairwise(lrs[15:21])]
    assert steps == pytest.approx([-0.9 * LR / 5] * 5)  # linear


def test_cosine_is_still_the_default() -> None:
    cfg = OptimConfig(lr=LR, warmup_steps=4, max_steps=20)
    assert cfg.schedule == "cosine"
    lrs = scheduled_lrs(dict(lr=LR, warmup_steps=4, max_steps=20), 20)
    progress = (10 - 4) / 16
    assert lrs[10] == pytest.approx(LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))
    assert lrs[10] == pytest.approx(LR * lr_multiplier(10, cfg))


def test_resume_mid_decay_keeps_the_value() -> None:
    """A scheduler restored from its state dict mid-decay (as Lightning restores it from
    a checkpoint) gives the same learning rates as the run that never stopped."""
    module = LMModule(TINY, WSD)
    configured = module.configure_optimizers()
    opt, sched = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    for _ in range(17):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    resumed = LMModule(TINY, WSD).configure_optimizers()
    r_opt, r_sched = resumed["optimizer"], resumed["lr_scheduler"]["scheduler"]
    r_opt.load_state_dict(saved_opt)
    r_sched.load_state_dict(saved_sched)
    assert r_opt.param_groups[0]["lr"] == pytest.approx(LR * (1 - 0.9 * 2 / 5))
    for _ in range(3):
        assert r_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        for o, s in ((opt, sched), (r_opt, r_sched)):
            o.step()
            s.step()


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(schedule="linear"), r"optim\.schedule='linear': use one of \['cosine', 'wsd'\]"),
        (dict(decay_fraction=0.0), r"optim\.decay_fraction must be in \(0, 1\], got 0\.0"),
        (dict(decay_fraction=1.5), r"optim\.decay_fraction must be in \(0, 1\], got 1\.5"),
        (dict(decay_fraction=True), r"optim\.decay_fraction must be a number, got True"),
        (
            dict(schedule="wsd", decay_fraction=0.9, warmup_steps=20, max_steps=100),
            r"optim\.decay_fraction=0\.9: the decay would start at step 10, inside the warmup",
        ),
    ],
)
def test_bad_schedule_fields_are_refused(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OptimConfig(**fields)


def test_app_passes_the_schedule_and_names_a_bad_one(tmp_path: Path) -> None:
    settings = settings_of(
        compose_train("optim.schedule=wsd", "optim.decay_fraction=0.3"), tmp_path
    )
    optim, _ = optimizer_and_growth(settings)
    assert (optim.schedule, optim.decay_fraction, optim.max_steps) == (
        "wsd",
        0.3,
        settings.max_steps,
    )
    bad = settings_of(compose_train("optim.schedule=step"), tmp_path)
    with pytest.raises(ConfigError, match=r"optim: optim\.schedule='step'"):
        optimizer_and_growth(bad)
    default, _ = optimizer_and_growth(settings_of(compose_train(), tmp_path))
    assert default.schedule == "cosine"
