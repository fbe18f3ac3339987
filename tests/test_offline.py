"""Offline growth of a checkpoint: resuming the grown file continues bitwise as the
in-loop growth at that step does; bad requests are refused before anything is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lit_utils import (
    TWO_STAGES,
    assert_bitwise_equal,
    datamodule,
    growth,
    lm_module,
    params,
    trainer,
)
from omegaconf import OmegaConf

from progrow import LMModule
from progrow.app.grow import main as grow_main
from progrow.events import GrowthEvent
from progrow.expand.targets import spread_sources
from progrow.model import config_from_tensor
from progrow.offline import (
    grow_checkpoint,
    grow_checkpoint_file,
    grow_family,
    load_checkpoint,
)

MAX_STEPS = 12
STAGE0 = {k: v for k, v in TWO_STAGES[0].items() if k != "step"}
STAGE1 = {k: v for k, v in TWO_STAGES[1].items() if k not in ("step", "layer_positions")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def in_loop(
    cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, torch.Tensor], list[GrowthEvent]]:
    """The reference: both stages grown in the loop; checkpoints every 4 steps (the one
    at step 4 is written before that step's growth)."""
    ckpt_dir = tmp_path_factory.mktemp("ckpt")
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, every_n_train_steps=4, save_top_k=-1, filename="{step}"
    )
    module = lm_module(MAX_STEPS)
    cb = growth()
    trainer(MAX_STEPS, [cb, ckpt], enable_checkpointing=True).fit(
        module, datamodule=datamodule(cache)
    )
    return ckpt_dir, params(module), cb.events


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_offline_growth_resumes_like_in_loop_growth(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[GrowthEvent]],
    cache: Path,
    tmp_path: Path,
) -> None:
    ckpt_dir, expected, events = in_loop
    src = ckpt_dir / "step=4.ckpt"
    before = _digest(src)
    out = tmp_path / "grown.ckpt"
    event = grow_checkpoint_file(
        src, out, STAGE0, seed=0, probe_batch=datamodule(cache).probe_batch()
    )
    assert _digest(src) == before  # the input is only read
    offline, in_loop_event = event.to_dict(), events[0].to_dict()
    for key in ("stage", "step", "params_before", "params", "sizes", "loss_before", "loss_after"):
        assert offline[key] == in_loop_event[key], key
    assert event.loss_delta is not None and abs(event.loss_delta) <= 1e-5

    # Resumed with the same schedule: stage 0 is already reached, stage 1 grows at step 8.
    cb = growth()
    module = lm_module(MAX_STEPS, seed=123)
    trainer(MAX_STEPS, [cb]).fit(module, datamodule=datamodule(cache), ckpt_path=str(out))
    assert_bitwise_equal(params(module), expected)
    assert [e.step for e in cb.events] == [4, 8]


def test_offline_growth_resumes_without_the_callback(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[GrowthEvent]],
    cache: Path,
    tmp_path: Path,
) -> None:
    """The second stage grown offline, resumed by a plain LMModule with no callback; the
    stage index (hence the seed of the new values) defaults to the next one (1)."""
    ckpt_dir, expected, _ = in_loop
    out = tmp_path / "grown.ckpt"
    grow_checkpoint_file(ckpt_dir / "step=8.ckpt", out, STAGE1, layer_positions="interleave")
    module = lm_module(MAX_STEPS, seed=123)
    trainer(MAX_STEPS, []).fit(module, datamodule=datamodule(cache), ckpt_path=str(out))
    assert_bitwise_equal(params(module), expected)


def test_offline_growth_carries_every_optimizer_entry(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[GrowthEvent]],
) -> None:
    ckpt_dir, _, _ = in_loop
    ckpt = load_checkpoint(ckpt_dir / "step=4.ckpt")
    grown = grow_checkpoint(ckpt, STAGE0)
    opt = grown["optimizer_states"][0]
    names = [n for group in grown["progrow"]["optimizer_params"][0] for n in group]
    state_dict = grown["state_dict"]
    # The state dict carries the grown config too (``_extra_state``), beside the parameters.
    assert config_from_tensor(state_dict.pop("model._extra_state")).d_model == 12
    shapes = {k: tuple(v.shape) for k, v in state_dict.items() if k.startswith("model.")}
    assert len(opt["state"]) == len(names) == len(shapes)
    step = ckpt["optimizer_states"][0]["state"][0]["step"]
    for index, name in enumerate(names):
        state = opt["state"][index]
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == shapes[name], name
        assert torch.equal(state["step"], step), name  # step kept
    assert grown["lr_schedulers"] == ckpt["lr_schedulers"]
    assert grown["loops"] == ckpt["loops"] and grown["global_step"] == ckpt["global_step"]
    assert grown["progrow"]["model_config"]["d_model"] == 12
    assert "GrowthCallback" in grown["callbacks"]
    assert grown["callbacks"]["GrowthCallback"]["events"][-1]["loss_delta"] is None


def test_family_writes_one_branch_per_size(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[GrowthEvent]], tmp_path: Path
) -> None:
    ckpt_dir, _, _ = in_loop
    branches: dict[str | Path, dict[str, Any]] = {
        tmp_path / "wide.ckpt": {"d_mlp": 24},
        tmp_path / "deep.ckpt": {"n_layers": 4},
    }
    events = grow_family(ckpt_dir / "step=12.ckpt", branches)
    assert events[tmp_path / "wide.ckpt"].sizes["d_mlp"] == 24
    assert events[tmp_path / "deep.ckpt"].sizes["n_layers"] == 4
    deep = LMModule.load_from_checkpoint(tmp_path / "deep.ckpt")
    assert deep.model.config.n_layers == 4 and deep.model.config.d_mlp == 20


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ({"d_ff": 64}, "unknown dimension.*d_ff"),
        ({"d_mlp": 8}, "d_mlp=8 is below the checkpoint's d_mlp=12"),
        ({"n_layers": 2.5}, "n_layers=2.5: must be a positive integer"),
        ({"d_mlp": 12}, "nothing to grow"),
        # Each size alone is fine; together the KV growth brings 5 query heads.
        ({"n_kv_heads": 5, "n_heads": 4}, "n_heads=4 is below the model's n_heads=5"),
    ],
)
def test_bad_sizes_are_refused_before_writing(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[GrowthEvent]],
    tmp_path: Path,
    sizes: dict[str, Any],
    match: str,
) -> None:
    ckpt_dir, _, _ = in_loop
    branches: dict[str | Path, dict[str, Any]] = {tmp_path / "ok.ckpt": {"d_mlp": 24}}
    branches[tmp_path / "bad.ckpt"] = sizes
    with pytest.raises(ValueError, match=match):
        grow_family(ckpt_dir / "step=4.ckpt", branches)
    assert list(tmp_path.iterdir()) == []  # not even the valid branch was written


def test_existing_output_and_foreign_checkpoint_are_refused(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[GrowthEvent]], tmp_path: Path
) -> None:
    ckpt_dir, _, _ = in_loop
    src = ckpt_dir / "step=4.ckpt"
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="already exists"):
        grow_checkpoint_file(src, out, {"d_mlp": 24})
    assert out.read_bytes() == b"keep me"
    with pytest.raises(ValueError, match="already exists"):
        grow_checkpoint_file(src, src, {"d_mlp": 24})

    foreign = load_checkpoint(src)
    del foreign["progrow"]
    with pytest.raises(ValueError, match=r"progrow\.model_config"):
        grow_checkpoint(foreign, {"d_mlp": 24})
    stale = load_checkpoint(src)
    del stale["progrow"]["optimizer_params"]
    with pytest.raises(ValueError, match=r"progrow\.optimizer_params"):
        grow_checkpoint(stale, {"d_mlp": 24})


def test_command_line(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[GrowthEvent]],
    cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt_dir, _, events = in_loop
    src = str(ckpt_dir / "step=4.ckpt")
    out = tmp_path / "cli.ckpt"
    # The probe batch from a run's config, as the app saves it (interpolations included).
    config = tmp_path / "config.yaml"
    data = {"source": "stdlib", "seq_len": 16, "batch_size": 4, "val_batches": 2}
    data.update(max_bytes=200_000, cache_dir=str(cache), seed="${seed}")
    OmegaConf.save(OmegaConf.create({"seed": 0, "data": data}), config)
    argv = [src, "--d_mlp", "24", "--n_layers", "2", "--probe", str(config), "-o", str(out)]
    assert grow_main(argv) == 0
    event = json.loads(capsys.readouterr().out)
    assert event["sizes"]["n_layers"] == 2
    assert event["loss_before"] == events[0].loss_before  # the same probe batch
    assert abs(event["loss_delta"]) <= 1e-5
    assert load_checkpoint(out)["progrow"]["model_config"]["n_layers"] == 2

    assert grow_main([src, "--d_mlp", "4", "-o", str(tmp_path / "x.ckpt")]) == 2
    assert "d_mlp=4 is below" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()

    family = tmp_path / "family"
    argv = [src, "--branch", "wide:d_mlp=24", "--branch", "deep:n_layers=3", "-o", str(family)]
    assert grow_main(argv) == 0
    assert sorted(p.name for p in family.iterdir()) == ["deep.ckpt", "wide.ckpt"]


def test_command_line_refuses_a_negative_stage_and_a_config_without_data(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[GrowthEvent]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A negative --stage would seed the new values and label the event with a stage that
    never exists; a --probe YAML with no `data` section is not a run's config. Both end in
    one line on stderr, exit status 2, nothing written."""
    ckpt_dir, _, _ = in_loop
    src = str(ckpt_dir / "step=4.ckpt")
    out = tmp_path / "x.ckpt"
    assert grow_main([src, "--d_mlp", "24", "--stage", "-3", "-o", str(out)]) == 2
    assert "stage must be an integer >= 0" in capsys.readouterr().err
    no_data = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create({"seed": 0}), no_data)
    assert grow_main([src, "--d_mlp", "24", "--probe", str(no_data), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("progrow-grow: --probe") and "no `data` section" in err
    assert err.count("\n") == 1
    assert not out.exists()


def test_offline_growth_places_as_the_runs_own_stage(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[dict[str, Any]]],
) -> None:
    """Without a placement, offline growth places stage 0's hidden factor as the
    checkpoint's schedule does (the readers, or the gains where its list names them), so
    the stage grows offline as it would have in the loop; an explicit placement wins."""
    ckpt_dir, _, _ = in_loop
    ckpt = load_checkpoint(ckpt_dir / "step=4.ckpt")
    schedule = ckpt["callbacks"]["GrowthCallback"]["schedule"]
    assert schedule[0]["hidden_factor_at"] == "readers"  # written, with d_model
    on_gains = [{**s, "hidden_factor_at": "gains"} if "d_model" in s else s for s in schedule]
    old = {**ckpt, "callbacks": {"GrowthCallback": {
        **ckpt["callbacks"]["GrowthCallback"], "schedule": on_gains,
    }}}  # fmt: skip
    grown = {
        "new-default": grow_checkpoint(ckpt, STAGE0),
        "new-readers": grow_checkpoint(ckpt, STAGE0, hidden_factor_at="readers"),
        "old-default": grow_checkpoint(old, STAGE0),
        "old-gains": grow_checkpoint(old, STAGE0, hidden_factor_at="gains"),
        "old-readers": grow_checkpoint(old, STAGE0, hidden_factor_at="readers"),
    }
    states = {name: g["state_dict"] for name, g in grown.items()}
    assert_bitwise_equal(states["new-default"], states["new-readers"])
    assert_bitwise_equal(states["old-default"], states["old-gains"])
    assert_bitwise_equal(states["old-readers"], states["new-readers"])  # explicit wins
    gain = "model.blocks.0.norm_attn.weight"
    assert not torch.equal(states["old-gains"][gain], states["new-readers"][gain])
    # the same for the key/query factor: stage 1 grows d_qk, here on the queries
    queries = [s if "d_qk" not in s else {**s, "qk_factor_at": "queries"} for s in schedule]
    on_queries = {**ckpt, "callbacks": {"GrowthCallback": {"schedule": queries}}}
    via_list = grow_checkpoint(on_queries, {"d_qk": 5}, stage=1)
    explicit = grow_checkpoint(ckpt, {"d_qk": 5}, stage=1, qk_factor_at="queries")
    keys = grow_checkpoint(ckpt, {"d_qk": 5}, stage=1)
    assert_bitwise_equal(via_list["state_dict"], explicit["state_dict"])
    q = "model.blocks.0.attn.q.weight"
    assert not torch.equal(keys["state_dict"][q], explicit["state_dict"][q])
    # beyond the run's own schedule there is no run placement: the default
    beyond = grow_checkpoint(old, {"d_model": 14}, stage=5)
    readers = grow_checkpoint(old, {"d_model": 14}, stage=5, hidden_factor_at="readers")
    assert_bitwise_equal(beyond["state_dict"], readers["state_dict"])


def test_command_line_places_the_key_query_factor(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[dict[str, Any]]], tmp_path: Path
) -> None:
    """--qk_factor_at: the old W_Q / W_K rows (2 heads, d_qk 3 -> 5: rows 0-2 and 5-7)
    carry the placement's factors, and their first moments the inverse (as if Adam had
    trained in the new parametrization); a bad placement is refused by the parser."""
    ckpt_dir, _, _ = in_loop
    src = ckpt_dir / "step=4.ckpt"  # d_qk 3, before the in-loop growth
    old = load_checkpoint(src)
    rows = torch.tensor([0, 1, 2, 5, 6, 7])
    root = (5 / 3) ** 0.5
    # Optimizer state is numbered in the optimizer's order (its groups), which
    # the progrow entry lists by name.
    names = [n for group in old["progrow"]["optimizer_params"][0] for n in group]
    for place, factors in {
        "keys": (1.0, root),
        "queries": (root, 1.0),
        "shared": (root**0.5, root**0.5),
    }.items():
        out = tmp_path / f"{place}.ckpt"
        argv = [str(src), "--d_qk", "5", "--qk_factor_at", place, "-o", str(out)]
        assert grow_main(argv) == 0
        grown = load_checkpoint(out)
        for proj, factor in zip(("q", "k"), factors, strict=True):
            name = f"model.blocks.0.attn.{proj}.weight"
            new, was = grown["state_dict"][name][rows], old["state_dict"][name]
            assert torch.allclose(new, was * factor, rtol=1e-6, atol=0), (place, proj)
            index = names.index(name)  # the same in both: d_qk adds no parameter
            moment = grown["optimizer_states"][0]["state"][index]["exp_avg"][rows]
            saved = old["optimizer_states"][0]["state"][index]["exp_avg"]
            assert torch.allclose(moment, saved / factor, rtol=1e-6, atol=0), (place, proj)
    argv = [str(src), "--d_qk", "5", "--qk_factor_at", "values", "-o", str(tmp_path / "x")]
    with pytest.raises(SystemExit):
        grow_main(argv)


def test_command_line_places_the_hidden_factor(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[dict[str, Any]]], tmp_path: Path
) -> None:
    """--hidden_factor_at readers: the old gains are kept and the readers' old columns
    (weights and first moments alike) carry sqrt(h/h'); gains is the paper's placement."""
    ckpt_dir, _, _ = in_loop
    src = ckpt_dir / "step=4.ckpt"  # d_model 8, before the in-loop growth
    old = load_checkpoint(src)["state_dict"]
    grown = {}
    for place in ("gains", "readers"):
        out = tmp_path / f"{place}.ckpt"
        assert (
            grow_main([str(src), "--d_model", "18", "--hidden_factor_at", place, "-o", str(out)])
            == 0
        )
        grown[place] = load_checkpoint(out)
    a = (8 / 18) ** 0.5
    gain, q = "model.blocks.0.norm_attn.weight", "model.blocks.0.attn.q.weight"
    readers, gains = grown["readers"]["state_dict"], grown["gains"]["state_dict"]
    assert torch.equal(readers[gain][:8], old[gain])
    assert torch.allclose(gains[gain][:8], old[gain] * a, rtol=0, atol=1e-7)
    assert torch.allclose(readers[q][:, :8], old[q] * a, rtol=0, atol=1e-7)
    assert torch.equal(gains[q][:, :8], old[q])
    module = LMModule.load_from_checkpoint(tmp_path / "readers.ckpt")
    index = [n for n, _ in module.named_parameters()].index(q)
    moments = {p: g["optimizer_states"][0]["state"][index]["exp_avg"] for p, g in grown.items()}
    assert torch.allclose(moments["readers"][:, :8], moments["gains"][:, :8] / a, atol=1e-7)
    argv = [str(src), "--d_model", "18", "--hidden_factor_at", "norms", "-o", str(tmp_path / "x")]
    with pytest.raises(SystemExit):
        grow_main(argv)


def test_command_line_init_split(
    in_loop: tuple[Path, dict[str, torch.Tensor], list[dict[str, Any]]], tmp_path: Path
) -> None:
    """--init split: the new MLP units copy old ones (W1 rows), W2's columns of a unit and
    its copies sum to the old column, and no column is zero. Without --init the run's own
    stage init is used ("zero" here); a bad value is refused by the parser."""
    ckpt_dir, _, _ = in_loop
    src = ckpt_dir / "step=4.ckpt"
    old = load_checkpoint(src)
    grown = {}
    for init in ("zero", "split"):
        out = tmp_path / f"{init}.ckpt"
        assert grow_main([str(src), "--d_mlp", "20", "--init", init, "-o", str(out)]) == 0
        grown[init] = load_checkpoint(out)
    default = grow_checkpoint(old, {"d_mlp": 20})
    assert_bitwise_equal(default["state_dict"], grown["zero"]["state_dict"])
    fc, proj = "model.blocks.0.mlp.fc.weight", "model.blocks.0.mlp.proj.weight"
    before, split = old["state_dict"], grown["split"]["state_dict"]
    source = spread_sources(before[fc].shape[0], 20)  # the old unit each unit holds
    assert torch.equal(split[fc], before[fc][source])
    summed = torch.zeros_like(before[proj]).index_add_(1, source, split[proj])
    assert torch.allclose(summed, before[proj], rtol=0, atol=1e-6)
    assert not (split[proj] == 0).all(dim=0).any()
    argv = [str(src), "--d_mlp", "20", "--init", "copy", "-o", str(tmp_path / "x")]
    with pytest.raises(SystemExit):
        grow_main(argv)


def _bad_inputs(root: Path) -> dict[str, Path]:
    """Files and folders that are not progrow checkpoints, as users hand them over."""
    root.mkdir()
    tensor = root / "weights.pt"
    torch.save(torch.zeros(3), tensor)
    text = root / "notes.txt"
    text.write_text("not a checkpoint\n")
    state = root / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, state)
    empty = root / "empty.pt"
    empty.write_bytes(b"")
    folder = root / "a_folder"
    folder.mkdir()
    (folder / "x.txt").write_text("x")
    return {"tensor": tensor, "text": text, "state": state, "empty": empty, "folder": folder}


@pytest.mark.parametrize("kind", ["tensor", "text", "state", "empty", "folder", "missing"])
def test_grow_cli_answers_a_bad_input_file_in_one_line(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every bad input ends in one line on stderr and exit status 2, nothing written."""
    src = _bad_inputs(tmp_path / "in").get(kind, tmp_path / "nowhere.ckpt")
    out = tmp_path / "out" / "grown.ckpt"
    assert grow_main([str(src), "--d_mlp", "24", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("progrow-grow: ") and "\n" not in err, err
    assert str(src) in err and "Traceback" not in err
    assert not out.parent.exists()
