"""Offline growth: grow a training checkpoint between jobs, then resume it with any strategy.

:func:`grow_checkpoint` takes a Lightning checkpoint written while training with progrow
(``LMModule`` or a module with a :class:`~progrow.GrowthCallback`) and returns a new one in
which the Transformer and every optimizer state entry are grown exactly as an in-loop
growth at that step would grow them: the same expansions, the same record, the same
optimizer surgery (:func:`progrow.surgery.grow_with_optimizers`), and new values from the
same per-stage seed. The LR scheduler, the loop state (step, data position) and the
training totals are kept, and a growth event with the in-loop schema is appended to the
growth callback's state. ``fit(ckpt_path=grown)`` then continues as the in-loop growth
would have. :func:`grow_checkpoint_file` and :func:`grow_family` work on files and never
write over anything; ``progrow-grow`` (:mod:`progrow.app.grow`) is the command line.
:mod:`progrow.offline_io` turns the checkpoint into the live model and optimizers grown
here, and the grown ones back into a checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from progrow.checkpoint_files import (
    CALLBACK_KEY,
    CHECKPOINT_KEY,
    checkpoint_config,
    load_checkpoint,
)
from progrow.config import GROWABLE_DIMS, TransformerConfig
from progrow.events import GrowthEvent, events_from_dicts
from progrow.expand.hidden import FactorAt
from progrow.expand.layers import Positions
from progrow.expand.step import GrowthStep
from progrow.expand.targets import Init
from progrow.expand.widths import QkFactorAt
from progrow.factor_placement import PLACEMENT_KEYS
from progrow.loss import lm_loss
from progrow.model import Transformer
from progrow.offline_io import (
    assemble_checkpoint,
    load_model,
    load_optimizers,
    refuse_existing,
    write_checkpoint,
)
from progrow.perturb import ShrinkPerturb
from progrow.schedule import PERTURB_KEYS, stage_seed
from progrow.surgery import NewMoments, OptimizerState, SurgeryOptions, grow_with_optimizers


def check_sizes(config: TransformerConfig, sizes: Mapping[str, Any]) -> dict[str, int]:
    """The targets of ``sizes`` that differ from ``config``; refuses bad ones.

    Raises:
        ValueError: an unknown dimension, a size that is not a positive integer or that is
            below the current one, or nothing to grow; the message names the dimension.
    """
    unknown = sorted(set(sizes) - set(GROWABLE_DIMS))
    if unknown:
        raise ValueError(
            f"unknown dimension(s) {unknown}; the growable dimensions are {list(GROWABLE_DIMS)}"
        )
    current = config.sizes()
    for dim, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"{dim}={size!r}: must be a positive integer")
        if size < current[dim]:
            raise ValueError(f"{dim}={size} is below the checkpoint's {dim}={current[dim]}")
    todo = {dim: int(size) for dim, size in sizes.items() if size != current[dim]}
    if not todo:
        raise ValueError(f"nothing to grow: the checkpoint already has the sizes {dict(sizes)}")
    return todo


def _probe_loss(model: Transformer, batch: Tensor) -> float:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(lm_loss(model, batch))
    finally:
        model.train(was_training)


def grow_checkpoint(
    checkpoint: Mapping[str, Any],
    sizes: Mapping[str, int],
    *,
    layer_positions: Positions = "append",
    hidden_factor_at: FactorAt | None = None,
    qk_factor_at: QkFactorAt | None = None,
    init: Init | None = None,
    seed: int = 0,
    stage: int | None = None,
    probe_batch: Tensor | None = None,
    new_moments: NewMoments = "zero",
    model_attr: str = "model",
    optimizer_state: OptimizerState = "carry",
    shrink_perturb: ShrinkPerturb | Mapping[str, float] | None = None,
    new_noise: float | None = None,
) -> dict[str, Any]:
    """A grown copy of a progrow training checkpoint; ``checkpoint`` is left unchanged.

    Args:
        checkpoint: a loaded Lightning checkpoint with progrow's ``progrow`` entry.
        sizes: target sizes, e.g. ``{"d_mlp": 512, "n_layers": 4}``; never smaller.
        layer_positions: where new layers go ("append", "interleave" or indices).
        hidden_factor_at: where a hidden-size growth puts its ``sqrt(h / h')`` factor,
            "readers" or "gains" (see :func:`progrow.expand_hidden`); ``None``: as the
            checkpoint's own schedule places stage ``stage`` if that stage grows the
            hidden size (a list saved before placements were written: "gains", the
            default then), else "readers".
        qk_factor_at: where a ``d_qk`` growth puts its ``sqrt(d_qk' / k)`` factor, "keys",
            "queries" or "shared" (see :func:`progrow.expand_qk`); ``None``: as the
            checkpoint's own stage places it (older lists: "keys"), else "keys".
        init: how new entries are filled, "zero", "split" or "stack" (:func:`progrow.grow`);
            ``None``: as the checkpoint's own schedule fills stage ``stage``, else "zero".
        seed: the run's seed (``GrowthCallback(seed=...)``, the app's ``seed``).
        stage: stage index for the seed of the new values; default: the number of growth
            events already in the checkpoint (the next stage of the run).
        probe_batch: ``(B, T + 1)`` token ids; when given, the event records the next-token
            loss before and after (else those fields are ``None``).
        new_moments: how new Adam entries are filled, as in ``GrowthCallback``.
        model_attr: where the module keeps the Transformer (its state_dict prefix).
        optimizer_state: "carry", "reset_old" or "reset_all", as in ``GrowthCallback``.
        shrink_perturb: ``{"shrink": λ, "noise": σ}`` on the old weights
            (:mod:`progrow.perturb`); ``None``: as the checkpoint's own schedule has
            stage ``stage``, else off (``{"shrink": 1}`` turns it off).
        new_noise: std of the noise on the new zero entries; ``None``: as the
            checkpoint's own stage, else 0.

    Returns:
        The grown checkpoint: the Transformer's weights and every optimizer's state grown,
        ``progrow`` updated, the growth event appended to ``callbacks["GrowthCallback"]``;
        LR schedulers, loop state and everything else as in ``checkpoint``.

    Raises:
        ValueError: no progrow architecture in the checkpoint, an unknown, non-integer or
            shrinking size, nothing to grow, or optimizer state that cannot be matched to
            the parameters. Nothing is changed when it raises.

    Example:
        >>> grown = grow_checkpoint(torch.load("step=400.ckpt"), {"d_mlp": 512})  # doctest: +SKIP
    """
    _check_stage(stage)
    config = checkpoint_config(checkpoint)
    todo = check_sizes(config, sizes)
    # The options given (``None``: as the run's own stage), checked before anything else.
    given = _given(
        hidden_factor_at=hidden_factor_at,
        qk_factor_at=qk_factor_at,
        init=init,
        shrink_perturb=shrink_perturb,
        new_noise=new_noise,
    )
    GrowthStep(todo, layer_positions=layer_positions, **given)
    surgery = SurgeryOptions(new_moments=new_moments, optimizer_state=optimizer_state)
    entry = dict(checkpoint[CHECKPOINT_KEY])
    prefix = f"{model_attr}." if model_attr else ""
    holder = load_model(checkpoint["state_dict"], config, prefix)
    model = holder.get_submodule(model_attr) if model_attr else holder
    assert isinstance(model, Transformer)
    optimizers = load_optimizers(checkpoint, entry.get("optimizer_params"), holder)
    callbacks = dict(checkpoint.get("callbacks", {}))
    growth_state = dict(callbacks.get(CALLBACK_KEY, {"events": [], "schedule": []}))
    events = events_from_dicts(growth_state.get("events"))
    index = len(events) if stage is None else stage
    spec = _stage_step(todo, {"layer_positions": layer_positions, **given}, growth_state, index)

    loss_before = None if probe_batch is None else _probe_loss(model, probe_batch)
    started = time.perf_counter()
    params_before = model.num_params()
    generator = torch.Generator().manual_seed(stage_seed(seed, index))
    grow_with_optimizers(holder, model, optimizers, spec, surgery, generator=generator)
    seconds = time.perf_counter() - started
    loss_after = None if probe_batch is None else _probe_loss(model, probe_batch)

    # The in-loop event's record (GrowthCallback), so reports read both alike.
    events.append(
        GrowthEvent(
            stage=index,
            step=int(checkpoint.get("global_step", 0)),
            params_before=params_before,
            params=model.num_params(),
            sizes=model.config.sizes(),
            loss_before=loss_before,
            loss_after=loss_after,
            seconds=seconds,
            flops=float(entry.get("flops", 0.0)),
        )
    )
    callbacks[CALLBACK_KEY] = {**growth_state, "events": [e.to_dict() for e in events]}
    return assemble_checkpoint(
        checkpoint, holder, prefix, optimizers, {**entry, "callbacks": callbacks}
    )


def _check_stage(stage: int | None) -> None:
    """Refuses a stage that is not ``None`` or an integer >= 0."""
    if stage is not None and (isinstance(stage, bool) or not isinstance(stage, int) or stage < 0):
        raise ValueError(f"stage must be an integer >= 0 (or None: the next stage), got {stage!r}")


def _given(**options: Any) -> dict[str, Any]:
    """The options that are not ``None`` (``None``: as the run's own stage)."""
    return {key: value for key, value in options.items() if value is not None}


def _stage_step(
    sizes: Mapping[str, int],
    given: Mapping[str, Any],
    growth_state: Mapping[str, Any],
    index: int,
) -> GrowthStep:
    """The growth step to ``sizes``: the options as given, else as the run's own saved
    stage ``index`` had them (placements, init, perturbations), else the defaults."""
    own = _saved_stage(growth_state, index)
    saved = {key: own[key] for key in (*PLACEMENT_KEYS, "init", *PERTURB_KEYS) if key in own}
    return GrowthStep(sizes, **{**saved, **given})


def _saved_stage(growth_state: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Stage ``index`` of the run's saved schedule (``{}`` if it has none)."""
    listed = growth_state.get("schedule") or []
    return dict(listed[index]) if 0 <= index < len(listed) else {}


def grow_family(
    src: str | Path, branches: Mapping[Any, Mapping[str, Any]], **options: Any
) -> dict[Path, GrowthEvent]:
    """Grow one checkpoint into several sized branches, one file each.

    Every output is checked to be new and every branch's sizes valid before anything is
    written; ``src`` is only read. ``options`` are those of :func:`grow_checkpoint`.

    Args:
        src: the checkpoint to branch from.
        branches: output path -> target sizes, e.g.
            ``{"wide.ckpt": {"d_mlp": 512}, "deep.ckpt": {"n_layers": 8}}``.

    Returns:
        Output path -> the growth event written into it.

    Example:
        >>> grow_family("step=400.ckpt", {"a.ckpt": {"d_mlp": 512}})  # doctest: +SKIP
    """
    outputs = [Path(p) for p in branches]
    if not outputs:
        raise ValueError("branches is empty: give at least one output and its sizes")
    refuse_existing(outputs)
    checkpoint = load_checkpoint(src)
    config = checkpoint_config(checkpoint)
    for sizes in branches.values():
        check_sizes(config, sizes)
    grown = {Path(p): grow_checkpoint(checkpoint, s, **options) for p, s in branches.items()}
    for path, ckpt in grown.items():
        write_checkpoint(ckpt, path)
    return {
        path: GrowthEvent.from_dict(ckpt["callbacks"][CALLBACK_KEY]["events"][-1])
        for path, ckpt in grown.items()
    }


def grow_checkpoint_file(
    src: str | Path, dst: str | Path, sizes: Mapping[str, int], **options: Any
) -> GrowthEvent:
    """Grow the checkpoint file ``src`` into the new file ``dst``; returns the event.

    ``dst`` must not exist (checked before anything is read); ``src`` is only read.
    ``options`` are those of :func:`grow_checkpoint`.

    Example:
        >>> grow_checkpoint_file("step=400.ckpt", "grown.ckpt", {"n_layers": 4})  # doctest: +SKIP
    """
    return grow_family(src, {dst: sizes}, **options)[Path(dst)]
