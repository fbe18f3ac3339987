"""Growth under FSDP2 (``fully_shard``, Lightning's ``ModelParallelStrategy``).

A sharded model cannot be grown in place: every parameter is a ``DTensor`` holding one
shard per rank. :func:`grow_sharded` gathers the Transformer into a plain full model,
grows it with the same expansions as unsharded training, shards the grown model again
with the module's own policy (its ``configure_model``), and carries the live optimizer
onto the new shards with the same optimizer surgery (:mod:`progrow.surgery`), gathering
one parameter's state at a time and sharding its carried state at once (so the LR
scheduler stays attached, and no full copy of the whole optimizer state exists). Every
rank draws the same new values, so every rank ends with the same full parameters.

:func:`shard_transformer` is the policy :class:`~progrow.training.LMModule` uses: each
block is its own FSDP unit, then the whole Transformer (embeddings, final norm, head).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, distribute_tensor

from progrow.checkpoint_files import CHECKPOINT_KEY, checkpoint_config
from progrow.config import TransformerConfig
from progrow.expand.grow import grow_step
from progrow.expand.step import GrowthStep
from progrow.model import Transformer
from progrow.moments import StateTransport
from progrow.optimizer_layout import param_names, prefix_of
from progrow.record import ExpansionRecord
from progrow.surgery import SurgeryOptions, carry_optimizers
from progrow.training.architecture import find_transformer
from progrow.training.lightning_internals import optimizers_to_device

State = dict[str, Any]


def shard_transformer(model: Transformer, mesh: DeviceMesh | None = None, **options: Any) -> None:
    """Shard ``model`` with FSDP2: each block, then the whole model (idempotent).

    Args:
        model: the Transformer (plain, or already sharded: then nothing happens).
        mesh: the 1-D data-parallel mesh (default: all ranks).
        options: further ``fully_shard`` keyword arguments (``mp_policy``, ...).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return
    for block in model.blocks:
        fully_shard(block, mesh=mesh, **options)
    fully_shard(model, mesh=mesh, **options)


def data_parallel_mesh(device_mesh: DeviceMesh) -> DeviceMesh:
    """The mesh FSDP shards over: Lightning's ``data_parallel`` dimension.

    Raises:
        ValueError: a tensor-parallel size above 1 (the Transformer is not tensor-parallel).
    """
    names = device_mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and device_mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            "ModelParallelStrategy has tensor_parallel_size="
            f"{device_mesh['tensor_parallel'].size()}: progrow shards with FSDP only; set "
            "data_parallel_size=<number of processes>, tensor_parallel_size=1"
        )
    return device_mesh["data_parallel"] if "data_parallel" in names else device_mesh


def _full(value: Any) -> Any:
    return value.full_tensor() if isinstance(value, DTensor) else value


def _shard_like(value: Any, param: Tensor) -> Any:
    """``value`` sharded as ``param`` is: a full tensor of ``param``'s shape is split
    locally (every rank holds the same full values), a ``DTensor`` laid out otherwise is
    redistributed, anything else (``step``) is kept."""
    if not isinstance(param, DTensor) or not isinstance(value, Tensor):
        return value
    if isinstance(value, DTensor):
        if value.placements == param.placements:
            return value
        return value.redistribute(param.device_mesh, param.placements)
    if value.shape != param.shape:
        return value
    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)


#: Optimizer surgery on sharded state: the rules see one parameter's full state at a time.
SHARDED_STATE = StateTransport(
    read=lambda param, state: {k: _full(v) for k, v in state.items()},
    write=lambda param, state: {k: _shard_like(v, param) for k, v in state.items()},
)


def _empty_transformer(
    config: TransformerConfig, device: torch.device, dtype: torch.dtype
) -> Transformer:
    """A plain Transformer of ``config``, uninitialized, on ``device`` in ``dtype`` (built
    on meta: nothing is drawn from the global random stream)."""
    with torch.device("meta"):
        plain = Transformer(config)
    plain.to_empty(device=device).to(dtype=dtype)
    if config.tie_embeddings:
        plain.lm_head.weight = plain.tok_emb.weight
    return plain


def _set_transformer(module: nn.Module, attr: str, model: Transformer) -> None:
    parent_path, _, leaf = attr.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, leaf, model)


def _gather_model(model: Transformer) -> Transformer:
    """A plain Transformer with ``model``'s full parameters (on every rank)."""
    full = {name: _full(p.detach()) for name, p in model.state_dict().items()}
    ref = next(model.parameters())
    plain = _empty_transformer(model.config, ref.device, ref.dtype)
    plain.load_state_dict(full)
    return plain.train(model.training)


def grow_sharded(
    module: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    step: GrowthStep,
    reshard: Callable[[], None],
    surgery: SurgeryOptions | None = None,
    *,
    generator: torch.Generator | None = None,
    model_attr: str = "model",
) -> ExpansionRecord:
    """Grow the FSDP2-sharded Transformer at ``module.<model_attr>`` and its optimizers.

    Gather the model (full tensors on every rank), grow it per ``step`` with
    :func:`~progrow.expand.grow.grow_step` (drawing from ``generator``), put it in place
    and call ``reshard()`` (which must shard ``module.<model_attr>`` again, e.g. the
    module's ``configure_model``); then carry every optimizer onto the new shards with
    :func:`~progrow.surgery.carry_optimizers` per ``surgery``, the same rules as unsharded
    training, one parameter's state gathered at a time (:data:`SHARDED_STATE`). Every rank
    must call this together. ``surgery.new_moments`` must be "zero".

    Returns:
        The expansion record (names relative to the Transformer).
    """
    from torch.distributed.fsdp import FSDPModule

    surgery = SurgeryOptions() if surgery is None else surgery
    if surgery.new_moments != "zero":  # before any change
        raise ValueError(
            f"new_moments={surgery.new_moments!r} is not supported under FSDP2 (its "
            "sibling statistics would need the whole state gathered); use 'zero'"
        )
    sharded_model = find_transformer(module, model_attr)
    for sub in sharded_model.modules():
        if isinstance(sub, FSDPModule):
            # A forward without backward (the probe loss) leaves the root unit's parameters
            # unsharded; the optimizer holds the sharded ones.
            sub.reshard()
    old_names = param_names(module)
    prefix = prefix_of(module, sharded_model)
    plain = _gather_model(sharded_model)
    _set_transformer(module, model_attr, plain)
    del sharded_model  # its shards live on only in the optimizers, until they are carried
    # The full model, the same values on every rank (drawn on the CPU from one seed).
    record = grow_step(plain, step, generator=generator)
    reshard()
    if not isinstance(next(find_transformer(module, model_attr).parameters()), DTensor):
        raise RuntimeError("reshard() left the grown Transformer unsharded")
    carry_optimizers(
        module, record.prefixed(prefix), old_names, optimizers, surgery, transport=SHARDED_STATE
    )
    return record


def rebuild_for_checkpoint(module: nn.Module, path: Path, model_attr: str = "model") -> bool:
    """Give ``module`` the (grown) architecture stored with the checkpoint at ``path``.

    Reads only the metadata of a distributed checkpoint (a folder); a full checkpoint file
    is memory-mapped. If the architecture differs, ``module.<model_attr>`` becomes a new
    plain (unsharded, uninitialized) Transformer of it; returns whether that happened.
    """
    meta = path / "meta.pt" if path.is_dir() else path
    checkpoint = torch.load(meta, map_location="cpu", mmap=not path.is_dir(), weights_only=False)
    if CHECKPOINT_KEY not in checkpoint:
        return False  # not written by progrow: load as it is
    config = checkpoint_config(checkpoint)
    current = find_transformer(module, model_attr)
    if config == current.config:
        return False
    ref = next(current.parameters())
    _set_transformer(module, model_attr, _empty_transformer(config, ref.device, ref.dtype))
    return True


class GrowableModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` (FSDP2), able to resume grown checkpoints.

    Sharded strategies load a checkpoint into the model that ``configure_model`` already
    sharded, and load it after setup. A checkpoint written after growth has larger shapes
    than the module's ``__init__`` builds, so before loading, this strategy rebuilds the
    checkpoint's architecture, shards it with the module's ``configure_model`` and sets up
    the optimizers over it again (their state and the LR schedulers load afterwards, as
    usual). Use it with :class:`~progrow.GrowthCallback`; everything else is
    ``ModelParallelStrategy``'s.

    Args:
        model_attr: where the module keeps its Transformer.
        kwargs: ``ModelParallelStrategy`` arguments (``data_parallel_size``,
            ``tensor_parallel_size=1``, ``save_distributed_checkpoint``, ``timeout``, ...).
    """

    def __init__(self, *args: Any, model_attr: str = "model", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_attr = model_attr

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        path = Path(self.broadcast(checkpoint_path))
        module = self.lightning_module
        if module is not None and rebuild_for_checkpoint(module, path, self.model_attr):
            module.configure_model()
            trainer = module.trainer
            if trainer.state.fn == TrainerFn.FITTING:
                self.setup_optimizers(trainer)
                optimizers_to_device(self.optimizers, self.root_device)
        return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
