"""``progrow-grow``: grow a training checkpoint offline, then resume it with any strategy.

Examples:
    progrow-grow RUN/checkpoints/step_1000.ckpt --d_mlp 512 --n_layers 4 -o grown.ckpt
    progrow-grow last.ckpt --branch wide:d_mlp=512,n_heads=8 --branch deep:n_layers=8 -o family/
    progrow-grow last.ckpt --d_model 96 --probe RUN/.hydra/config.yaml --seed 0 -o grown.ckpt

Each output is a new file (an existing one is refused, as is any bad size, before
anything is written); the input is only read. Resume with
``python -m progrow.train ckpt_path=grown.ckpt ...`` or ``trainer.fit(..., ckpt_path=...)``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from progrow.config import GROWABLE_DIMS
from progrow.expand.step import GrowthStep
from progrow.offline import grow_checkpoint, grow_family
from progrow.surgery import OPTIMIZER_STATES


def _positions(value: str) -> str | list[int]:
    if value in ("append", "interleave"):
        return value
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layer_positions={value!r}: use append, interleave or indices like 0,2,4"
        ) from None


def _shrink_perturb(value: str) -> dict[str, float]:
    """``SHRINK,NOISE`` -> ``{"shrink": SHRINK, "noise": NOISE}`` (checked later)."""
    try:
        shrink, noise = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--shrink_perturb={value!r}: expected SHRINK,NOISE, e.g. 0.8,0.1"
        ) from None
    return {"shrink": shrink, "noise": noise}


def _branch(value: str) -> tuple[str, dict[str, int]]:
    """``NAME:dim=N,dim=N`` -> (NAME, sizes)."""
    name, sep, spec = value.partition(":")
    try:
        # The name becomes the file NAME.ckpt inside -o: no folders, no "..".
        if not (sep and name and spec) or "/" in name or name.startswith("."):
            raise ValueError
        sizes = {dim.strip(): int(size) for dim, size in (p.split("=") for p in spec.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--branch={value!r}: expected NAME:dim=N[,dim=N...], e.g. wide:d_mlp=512"
        ) from None
    return name, sizes


def _probe(path: str) -> torch.Tensor:
    """A probe batch from a ``.pt`` tensor of token ids or from a run's Hydra config."""
    if path.endswith((".yaml", ".yml")):
        from omegaconf import DictConfig, OmegaConf

        from progrow.training.datamodule import LMDataModule

        run_cfg = OmegaConf.load(path)
        if not isinstance(run_cfg, DictConfig) or not isinstance(run_cfg.get("data"), DictConfig):
            raise ValueError(
                f"--probe {path}: no `data` section (expected a run's .hydra/config.yaml)"
            )
        data: Any = OmegaConf.to_container(run_cfg.data, resolve=True)
        data.pop("_target_", None)
        return LMDataModule(**data).probe_batch()
    batch = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(batch, torch.Tensor) or batch.ndim != 2 or batch.dtype != torch.long:
        raise ValueError(f"--probe {path}: expected a (B, T + 1) LongTensor of token ids")
    return batch


#: How a :class:`GrowthStep` option reads from the command line (others: as a string).
_FLAG_TYPES: dict[str, Callable[[str], Any]] = {
    "layer_positions": _positions,
    "shrink_perturb": _shrink_perturb,
    "new_noise": float,
}


def _step_flags(p: argparse.ArgumentParser) -> None:
    """One ``--OPTION`` flag per :class:`GrowthStep` option, from its field; unset (``None``),
    :func:`grow_checkpoint`'s default: for most, as the checkpoint's own schedule has that
    stage."""
    defaults = inspect.signature(grow_checkpoint).parameters
    for f in fields(GrowthStep):
        if f.name == "sizes":
            continue
        own = f.metadata.get("default_text", f.default)
        default = f"as the checkpoint's schedule has that stage, else {own}"
        if defaults[f.name].default is not None:
            default = str(defaults[f.name].default)
        p.add_argument(
            f"--{f.name}",
            type=_FLAG_TYPES.get(f.name, str),
            choices=f.metadata.get("choices"),
            default=None,
            metavar=f.metadata.get("metavar"),
            help=f"{f.metadata['help']}; default: {default}",
        )


def _step_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`GrowthStep` options given as flags."""
    given = {name: getattr(args, name) for name in GrowthStep.options()}
    return {name: value for name, value in given.items() if value is not None}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="progrow-grow",
        description="Grow a progrow training checkpoint (weights and optimizer state).",
    )
    p.add_argument("checkpoint", help="the checkpoint to grow (only read)")
    for dim in GROWABLE_DIMS:
        p.add_argument(f"--{dim}", type=int, metavar="N", help=f"target {dim}")
    _step_flags(p)
    p.add_argument("--branch", type=_branch, action="append", default=[], metavar="NAME:SIZES")
    p.add_argument("-o", "--out", required=True, help="output file (a folder with --branch)")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (default 0)")
    p.add_argument("--stage", type=int, help="stage index for the seed (default: next)")
    p.add_argument("--new_moments", choices=("zero", "bias_corrected"), default="zero")
    p.add_argument(
        "--optimizer_state",
        choices=OPTIMIZER_STATES,
        default="carry",
        help="Adam/SGD state at the growth: carry (moved onto the grown parameters), "
        "reset_old (the changed and new parameters start afresh: zero moments, step 0) or "
        "reset_all (every parameter afresh); default carry",
    )
    p.add_argument("--model_attr", default="model")
    p.add_argument("--probe", help="probe batch: a .pt LongTensor or a run's .hydra/config.yaml")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``progrow-grow``; prints each growth event as JSON."""
    p = parser()
    args = p.parse_args(argv)
    sizes = {dim: getattr(args, dim) for dim in GROWABLE_DIMS if getattr(args, dim) is not None}
    if args.branch and sizes:
        p.error("give sizes either as --DIM flags (one output) or with --branch, not both")
    if not args.branch and not sizes:
        p.error(f"nothing to grow: give at least one of --{' --'.join(GROWABLE_DIMS)}")
    names = [name for name, _ in args.branch]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        p.error(f"--branch name(s) {repeated} given more than once (one file each)")
    out = Path(args.out)
    branches: dict[str | Path, dict[str, int]] = (
        {out / f"{name}.ckpt": s for name, s in args.branch} if args.branch else {out: sizes}
    )
    try:
        probe = None if args.probe is None else _probe(args.probe)
        events = grow_family(
            args.checkpoint,
            branches,
            seed=args.seed,
            stage=args.stage,
            probe_batch=probe,
            new_moments=args.new_moments,
            model_attr=args.model_attr,
            optimizer_state=args.optimizer_state,
            **_step_options(args),
        )
    except (ValueError, OSError) as err:  # bad input files included: one line, exit 2
        print(f"progrow-grow: {err}", file=sys.stderr)
        return 2
    for path, event in events.items():
        print(json.dumps({"out": str(path), **event.to_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
