"""Shared helpers for the tests: tiny odd-sized models, perturbation, logits, training.

Kept generic on purpose: the table of expansions lives in ``expansion_table.py``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from progrow import Transformer, TransformerConfig

#: The checkout under test (the folder holding ``progrow/``).
REPO = Path(__file__).resolve().parents[1]


# ``--doctest-modules`` imports every module under tests/; the Hugging Face helpers need
# ``transformers`` (the ``hf`` extra, which ``make test`` installs). Without it the tests
# that use them skip with a reason (``pytest.importorskip``) instead of failing collection.
def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder refuses it, or sys.modules[name] is None
        return False


collect_ignore = [] if _importable("transformers") else ["hf_utils.py"]


def checkout_env() -> dict[str, str]:
    """Environment entries that make a subprocess import this checkout's ``progrow``
    rather than an installed copy (whatever its working directory)."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def run_process_groups(
    commands: Sequence[tuple[list[str], dict[str, str]]], timeout_s: float, what: str
) -> list[str]:
    """Run each ``(argv, env)`` in its own session and return their combined outputs; a
    failed process fails the test with its output's tail.

    Every process leads a new process group, so a hang (e.g. a rank waiting in a collective)
    is ended by killing each group, children included, after ``timeout_s`` in all.
    """
    procs = [
        subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        for argv, env in commands
    ]
    deadline = time.monotonic() + timeout_s
    outputs = []
    try:
        for proc in procs:
            remaining = max(0.0, deadline - time.monotonic())
            outputs.append(proc.communicate(timeout=remaining)[0].decode())
    except subprocess.TimeoutExpired:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        pytest.fail(f"{what} did not finish in {timeout_s} s (killed its process groups)")
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
    return outputs


def pytest_configure(config: pytest.Config) -> None:
    # The test models are tiny: intra-op threads only add overhead, and on a shared
    # machine they make every op wait for a busy core.
    torch.set_num_threads(1)


#: Max abs logits difference allowed after a function-preserving expansion, per dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def tiny_config(**overrides: Any) -> TransformerConfig:
    """A tiny config with odd, mutually distinct sizes and a large ``norm_eps``.

    Odd sizes catch head-block indexing bugs that powers of two hide; ``norm_eps=1e-2``
    makes a missing eps rescale in the hidden expansion visible far above float error.
    """
    base: dict[str, Any] = dict(
        vocab_size=11,
        max_seq_len=9,
        d_model=7,
        d_mlp=5,
        n_heads=3,
        d_qk=3,
        d_v=2,
        n_layers=2,
        norm_eps=1e-2,
        init_std=0.1,
    )
    base.update(overrides)
    return TransformerConfig(**base)


def perturb_(model: Transformer, seed: int = 0) -> Transformer:
    """Move every parameter away from its init (gains off 1, biases off 0), in place.

    Expansion bugs that only matter for non-trivial gains or biases (e.g. a norm gain not
    rescaled, a bias not padded with zeros) are invisible at init.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen).to(param.dtype)
            scale = 0.3 if name.endswith("bias") or ".norm" in f".{name}" else 0.1
            param.add_(noise * scale)
    return model


def make_model(
    config: TransformerConfig, dtype: torch.dtype = torch.float64, seed: int = 0
) -> Transformer:
    """A perturbed model of ``config`` in ``dtype``, in eval mode."""
    torch.manual_seed(seed)
    model = Transformer(config).to(dtype)
    return perturb_(model, seed).eval()


def make_tokens(
    config: TransformerConfig, batch: int = 4, length: int | None = None, seed: int = 0
) -> torch.Tensor:
    """``(batch, length)`` token ids (default length ``max_seq_len``) in which every id of
    the vocabulary occurs early, so every embedding row gets a gradient. For training use
    ``length=max_seq_len + 1``: :func:`lm_loss` feeds all but the last token, and every
    position embedding then gets a gradient too."""
    length = config.max_seq_len if length is None else length
    gen = torch.Generator().manual_seed(seed)
    assert batch * (length - 1) >= config.vocab_size, "too few tokens to cover the vocabulary"
    ids = torch.randint(config.vocab_size, (length, batch), generator=gen)
    ids.view(-1)[: config.vocab_size] = torch.arange(config.vocab_size)
    return ids.T.contiguous()


def logits(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)


def snapshot(model: Transformer) -> dict[str, torch.Tensor]:
    """Detached copies of every parameter, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def lm_loss(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy."""
    out = model(tokens[:, :-1])
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), tokens[:, 1:].reshape(-1))


def train_(
    model: Transformer, tokens: torch.Tensor, steps: int = 3, lr: float = 1e-2
) -> Transformer:
    """A few AdamW steps (no weight decay) on next-token loss; returns the model in eval."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        lm_loss(model, tokens).backward()
        opt.step()
    return model.eval()
