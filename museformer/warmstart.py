"""Warm starts: a checkpoint trained without an input path, or with a smaller dictionary, loads into a
model that has them and computes what the checkpoint computed; and a warm start fine-tuned on a few
token types' embedding rows only (``--train-rows``)."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from instruct_tokenizer.grammar import token_type


def zero_linear(dim: int) -> nn.Linear:
    """A (C -> C) projection without bias that starts at zero, so that a model with an added input
    path begins (and warm-starts) exactly as it would without it."""
    proj = nn.Linear(dim, dim, bias=False)
    nn.init.zeros_(proj.weight)
    return proj


def fill_missing_zero_linear(state_dict: Dict, name: str, attr: str, proj: Optional[nn.Linear]) -> Dict:
    """Warm start: a checkpoint trained without the :func:`zero_linear` ``proj`` (module attribute
    ``attr``) gets its zero start, so the loaded model computes what the checkpoint computed."""
    key = f"{name}.{attr}.weight" if name else f"{attr}.weight"
    if proj is not None and key not in state_dict:
        state_dict[key] = torch.zeros_like(proj.weight)
    return state_dict


def grow_rows(state_dict: Dict, name: str, attr: str, weight: Optional[Tensor]) -> Dict:
    """Warm start with a grown dictionary (new token types appended at its end, docs/tokens.md): the
    checkpoint's (V_old, C) embedding gets zero rows for the V - V_old new entries, so every old token
    keeps its vector and its index, and the new ones start from nothing."""
    key = f"{name}.{attr}" if name else attr
    old = state_dict.get(key)
    if weight is None or old is None or old.dim() != 2 or old.shape[0] >= weight.shape[0]:
        return state_dict
    if old.shape[1] != weight.shape[1]:
        return state_dict  # a different width: strict loading reports it
    pad = old.new_zeros(weight.shape[0] - old.shape[0], old.shape[1])  # (V - V_old, C)
    state_dict[key] = torch.cat([old, pad], dim=0)  # (V, C)
    return state_dict



def parse_types(text: str) -> List[str]:
    """Token types from a comma-separated flag value (``--train-rows``, ``--anchor-free-types``)."""
    return [t.strip() for t in str(text).split(",") if t.strip()]

def train_only_rows(model: nn.Module, dictionary, types) -> int:
    """Freeze every parameter of ``model`` but the token embedding rows of the token ``types`` (e.g.
    {"QPM", "Tempo"}): the other rows of the token tables (encoder input, decoder input, output
    projection; one tensor when shared) get zero gradients, every other parameter none. Adam without
    weight decay then leaves them bit for bit where the warm start put them, so a fine-tune learns what
    those rows can carry without moving the rest of the model. Returns the number of rows that train.
    Raises ValueError when no symbol of ``dictionary`` has one of ``types``."""
    wanted = set(types)
    rows = [i for i, s in enumerate(dictionary.symbols) if token_type(s) in wanted]
    if not rows:
        raise ValueError(f"--train-rows {','.join(sorted(types))}: no token of these types in the dictionary")
    tables = {id(m.weight): m.weight for m in (model.encoder.embed.tokens, model.decoder.embed.tokens,
                                              model.decoder.out)}
    for p in model.parameters():
        p.requires_grad_(False)
    for weight in tables.values():
        if weight.shape[0] != len(dictionary):
            raise ValueError("--train-rows: a token table does not match the dictionary")
        mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype)  # (V, 1)
        mask[rows] = 1
        weight.requires_grad_(True)
        weight.register_hook(lambda grad, m=mask: grad * m.to(grad))
    return len(rows)
