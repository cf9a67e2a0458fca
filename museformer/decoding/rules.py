"""The decoding rules, one class each, applied outside the network as an ordered list (like Hugging
Face's logits processors). Every rule has the same small interface:

- ``prepare(rows, device, priors)``: per-slot tensors from the score tokens, (B, max_slots + 1) with one
  column for the EOS step, into the :class:`SlotTable` the encoder output carries;
- ``init_state(table, state)`` / ``update(state, tokens, step, table)``: its running state, kept in the one
  :class:`DecodeState` that travels through fairseq's incremental state, after each token read;
- ``__call__(logits, state, table, step)``: the (B, 1, V) logits of step ``step`` adjusted.

:class:`DecodeRules` builds the list from a :class:`~museformer.decoding.config.DecodeConfig` and the
dictionaries, in this order (each rule sees what the ones before it left):

    grammar mask -> (tempo state) -> key-down floor -> tempo band -> tempo plan -> fermata hold
    -> dynamics band -> velocity plan -> articulation plan -> timing plan
    -> expected value -> unisons once -> type temperature

The bands and the hold come before the expected value, which then takes the mean under the adjusted
distribution; unisons once comes after it (the mean would pick a velocity there); the temperature last.

A model trained on the relative tempo encoding (``instruct-tokenize build --relative-tempo``: its
dictionary counts ``TempoRel`` tokens) gets the grammar's functions for that encoding
(:func:`grammar_for`): a ``TempoLevel`` slot first, ``TempoRel`` per onset group, and every rule reads
the beat period of a ``TempoRel`` token as ratio x the slot's notated period (60 / ``QPM``) x the level
the row chose (``state["level_factor"]``).
"""
from __future__ import annotations

import functools
import importlib
import types
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from instruct_tokenizer.vocab import ART, ART_STEP, TIME, VEL, VEL_STEP

from ..constants import EOS_TYPE, MEAN, TEMPO_LEVEL_TYPE
from .config import DecodeConfig
from .functions import (DYN_FIELDS, FORCEABLE_LOGIT, LEVEL_FIELDS, apply_prior, band_reference, dynamics_band_penalty,
                        dynamics_level_update, expected_value_choice, fermata_hold, fermata_reference_bin,
                        key_down_floor, tempo_band_penalty, tempo_level_update)

Rows = List[List[str]]


def pad_rows(rows: List[list], fill, dtype: torch.dtype, device) -> Tensor:
    """Per-slot rows of unequal length -> (B, max_len + 1) tensor, ``fill`` after each row's end (the
    extra column is the EOS step)."""
    width = max(len(r) for r in rows) + 1
    return torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=dtype, device=device)


def at_step(table: Tensor, step: int) -> Tensor:
    """(B, W) per-slot tensor -> (B,) its column for ``step`` (the last column past the end)."""
    return table[:, column(table, step)]


def column(table: Tensor, step: int) -> int:
    """The column of a (B, W) per-slot tensor for ``step`` (the last column past the end)."""
    return min(step, table.shape[1] - 1)


def on_columns(logits: Tensor, columns: Tensor, adjust: Callable[[Tensor], Tensor]) -> Tensor:
    """(B, 1, V) logits with ``adjust`` applied to their ``columns`` (K,) only, (B, 1, K) -> (B, 1, K): for
    a rule whose arithmetic is elementwise over the tokens and leaves every other column as it is (its
    reductions over the tokens only read those columns), the same logits as ``adjust`` over all V, at
    the cost of K."""
    return logits.index_copy(-1, columns, adjust(logits.index_select(-1, columns)))


def finite_columns(numbers: Tensor) -> Tensor:
    """(V,) numbers (NaN: none) -> (K,) the tokens that have one, ascending."""
    return torch.isfinite(numbers).nonzero().squeeze(1)


def parse_type_temperature(text: str) -> Dict[str, Union[float, str]]:
    """``Tempo=0.7,Vel=mean`` -> {"Tempo": 0.7, "Vel": "mean"}; raises ValueError naming the flag."""
    out: Dict[str, Union[float, str]] = {}
    for item in filter(None, (text or "").split(",")):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--type-temperature: expected TYPE=T or TYPE=mean pairs, got {item!r}")
        if value.strip() == MEAN:
            out[name.strip()] = MEAN
            continue
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--type-temperature: expected TYPE=T or TYPE=mean pairs, got {item!r}") from None
    return out


ACTIVE_TESTS = {"finite": torch.isfinite, "positive": lambda t: torch.isfinite(t) & (t > 0), "true": lambda t: t}


class SlotTable(dict):
    """What the rules prepared from a batch of scores: name -> tensor whose first dimension is the batch
    (per-slot tables (B, W), per-row values (B,), prior states (B, 4)). It reorders as one object."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._active: Dict[tuple, List[bool]] = {}

    def select(self, order: Tensor) -> "SlotTable":
        """The rows ``order``; the table itself for the identity (fairseq's sampling reorders by it every
        step), which keeps what :meth:`active` computed."""
        rows = next(iter(self.values())).shape[0] if self else 0
        if order.numel() == rows and torch.equal(order, torch.arange(rows, device=order.device)):
            return self
        return SlotTable({k: v.index_select(0, order) for k, v in self.items()})

    def active(self, name: str, kind: str = "finite") -> List[bool]:
        """Per column of the (B, W) table ``name``: whether any row holds there what a rule acts on
        ("finite": a finite number, "positive": a finite number > 0, "true": True). A rule skips the
        steps where no row does, where its arithmetic would leave every row as it is (computed once per
        table: a Python list, so that the test costs no tensor operation per step)."""
        key = (name, kind)
        if key not in self._active:
            self._active[key] = ACTIVE_TESTS[kind](self[name]).any(0).tolist()
        return self._active[key]

    def values_at(self, name: str, step: int) -> tuple:
        """The distinct values of the (B, W) table ``name`` at ``step``'s column, sorted (computed once
        per table, as :meth:`active`)."""
        key = (name, "values")
        if key not in self._active:
            self._active[key] = [tuple(sorted(set(col))) for col in self[name].t().tolist()]
        return self._active[key][column(self[name], step)]

    def acts(self, name: str, step: int, kind: str = "finite") -> bool:
        """Whether any row's entry of table ``name`` at ``step``'s column is one a rule acts on."""
        return self.active(name, kind)[column(self[name], step)]


class DecodeState(dict):
    """The rules' running state: name -> tensor with the batch first (``period`` (B,), ``level`` (B, 4),
    ``dyn`` (B, 4)). It lives in the decoder's incremental state and reorders with it."""

    def reorder(self, order: Tensor) -> None:
        for key, value in list(self.items()):
            self[key] = value.index_select(0, order)


# the grammar functions that take ``relative`` (instruct_tokenizer.grammar, markings_baseline.dynamics_slot_refs)
RELATIVE_FUNCTIONS = ("target_slots", "tempo_slot_gaps", "art_nominal_q", "fermata_slots", "unison_repeats",
                      "dynamics_slot_refs", "note_values_at")


def dictionary_counts(d) -> Mapping[str, int]:
    """A fairseq Dictionary's token -> count (``dict.txt``'s counts: what the model was trained on)."""
    return {d.symbols[i]: int(d.count[i]) for i in range(len(d))}


def uses_relative_tempo(module, d) -> bool:
    """Whether the model of dictionary ``d`` was trained on the relative tempo encoding, by the grammar
    module's ``relative_tempo`` test of the dictionary's counts (False for a module without one)."""
    test = getattr(module, "relative_tempo", None)
    return bool(test is not None and test(dictionary_counts(d)))


def grammar_for(module, relative: bool):
    """The grammar module as the rules read it: itself for the absolute tempo encoding; for the relative
    one, a namespace whose per-score functions (``RELATIVE_FUNCTIONS``) give that encoding's slots and
    whose ``beat_period_s`` is a ``TempoRel`` token's beat period at a notated 120 quarters per minute and
    level 1 (``relative_beat_period_s(token, 1.0, 1.0)``: ratio x 0.5 s), which the rules scale by the
    row's level and the slot's notated tempo."""
    if not relative:
        return module
    ns = types.SimpleNamespace(**{k: getattr(module, k) for k in dir(module) if not k.startswith("__")})
    for name in RELATIVE_FUNCTIONS:
        if hasattr(module, name):
            setattr(ns, name, functools.partial(getattr(module, name), relative=True))
    if not hasattr(module, "dynamics_slot_refs"):
        from instruct_tokenizer.markings_baseline import dynamics_slot_refs

        ns.dynamics_slot_refs = functools.partial(dynamics_slot_refs, relative=True)
    ns.beat_period_s = functools.partial(module.relative_beat_period_s, scale=1.0, level=1.0)
    ns.relative = True
    return ns


class TokenTables:
    """Per target token: its type id, its number (``token_value``), its beat period (``beat_period_s``;
    relative encoding: at notated 120 and level 1) and its level factor (``tempo_level_factor``; relative
    encoding only, else None)."""

    def __init__(self, tgt_dict, module):
        self.tgt_dict = tgt_dict
        types = [module.token_type(tgt_dict[i]) for i in range(len(tgt_dict))]
        self.names = sorted(set(types) | {EOS_TYPE})
        self.type_id = {n: i for i, n in enumerate(self.names)}
        self.types = types
        self.relative = bool(getattr(module, "relative", False))
        self.value = self.numbers(getattr(module, "token_value", None))  # (V,) NaN: none
        self.period = self.numbers(getattr(module, "beat_period_s", None))  # (V,) s per quarter; NaN: none
        self.level_factor = self.numbers(module.tempo_level_factor) if self.relative else None  # (V,) NaN: none

    def numbers(self, number_of: Optional[Callable[[str], Optional[float]]]) -> Optional[Tensor]:
        """(V,) float: ``number_of(token)`` for every target token, NaN where it gives None."""
        if number_of is None:
            return None
        values = [number_of(self.tgt_dict[i]) for i in range(len(self.tgt_dict))]
        return torch.tensor([float("nan") if v is None else v for v in values])


class DecodeRule:
    """The interface every rule has (each method does nothing unless the rule needs it)."""

    def prepare(self, rows: Rows, device, priors: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {}

    def init_state(self, table: SlotTable, state: DecodeState) -> None:
        pass

    def update(self, state: DecodeState, tokens: Tensor, step: int, table: SlotTable) -> None:
        pass

    def __call__(self, logits: Tensor, state: DecodeState, table: SlotTable, step: int) -> Tensor:
        return logits


class GrammarMask(DecodeRule):
    """Allow only tokens of the type the performance grammar expects at this step (EOS after the last
    slot); specials and ``forbidden`` tokens never."""

    def __init__(self, tables: TokenTables, target_slots, forbidden: Sequence[str] = ()):
        d = tables.tgt_dict
        self.tables, self.target_slots = tables, target_slots
        table = torch.zeros(len(tables.names), len(d), dtype=torch.bool)
        for i, t in enumerate(tables.types):
            table[tables.type_id[t], i] = True
        eos = tables.type_id[EOS_TYPE]
        table[eos] = False
        for special in (d.bos(), d.pad(), d.unk()):
            table[:, special] = False
        table[eos, d.eos()] = True
        for token in forbidden:
            if d.index(token) != d.unk():
                table[:, d.index(token)] = False
        self.table = table  # (types, V)
        self.blocked = ~table  # (types, V)
        self._candidates: Dict[tuple, Tensor] = {}  # type ids -> the tokens they allow

    def candidates(self, table: "SlotTable", step: int) -> Tensor:
        """(K,) the tokens any row may take at ``step``: those of the slot types of the step's column
        (one tensor per set of types, so that the decoder can cache what it derives from it)."""
        types = table.values_at("slots", step)
        if types not in self._candidates:
            self._candidates[types] = self.table[list(types)].any(0).nonzero().squeeze(1)  # (K,)
        return self._candidates[types]

    def prepare(self, rows, device, priors):
        eos = self.tables.type_id[EOS_TYPE]
        ids = [[self.tables.type_id[s] for s in self.target_slots(r)] for r in rows]
        return {"slots": pad_rows(ids, eos, torch.long, device)}

    def __call__(self, logits, state, table, step):
        blocked = self.blocked.to(logits.device)[at_step(table["slots"], step)]  # (B, V)
        return logits.masked_fill(blocked.unsqueeze(1), float("-inf"))


class TempoState(DecodeRule):
    """No logits of its own: keeps the beat period of the latest ``Tempo`` token (s per quarter; the
    key-down floor and the fermata hold read it) and, with ``track_level``, the tempo level state
    (``tempo_level_update``; the tempo band and the fermata hold read it), starting from the level of the
    music before the segment (the renderer's ``tempo_prior``). In the relative encoding it also keeps the
    row's ``TempoLevel`` factor (``level_factor``), and a ``TempoRel`` token's beat period is its period
    at notated 120 and level 1 x level factor / the slot's notated-tempo scale (``QPM`` / 120)."""

    def __init__(self, tables: TokenTables, tempo_gaps, track_level: bool):
        if tables.period is None:
            raise ValueError("the grammar module gives no beat_period_s")
        self.tables, self.tempo_gaps, self.track_level = tables, tempo_gaps, track_level
        if (track_level or tables.relative) and tempo_gaps is None:
            raise ValueError("--tempo-band, --fermata-hold: the grammar module gives no tempo_slot_gaps")
        # per type id: whether a token of that type has a beat period (the others leave the state as it is)
        timed = [False] * len(tables.names)
        for i, t in enumerate(tables.types):
            if bool(torch.isfinite(tables.period[i])):
                timed[tables.type_id[t]] = True
        self.timed_types = timed

    def prepare(self, rows, device, priors):
        if not (self.track_level or self.tables.relative):
            return {}
        gaps = [self.tempo_gaps(r) for r in rows]
        out = {"slot_gap": pad_rows([g for g, _ in gaps], float("nan"), torch.float, device),
               "slot_scale": pad_rows([c for _, c in gaps], float("nan"), torch.float, device)}
        prior = priors.get("tempo_prior")
        zeros = torch.zeros(len(rows), LEVEL_FIELDS, device=device)  # (B, 4)
        out["tempo_prior"] = zeros if prior is None else prior.to(zeros)
        return out

    def init_state(self, table, state):
        b = table["slots"].shape[0]
        state["period"] = torch.full((b,), float("nan"), device=table["slots"].device)
        if self.tables.relative:
            state["level_factor"] = torch.full((b,), float("nan"), device=table["slots"].device)
        if self.track_level:
            state["level"] = table["tempo_prior"].clone()  # (B, 4)

    def update(self, state, tokens, step, table):
        if not self.tables.relative and (step == 0 or (
                not any(self.timed_types[t] for t in table.values_at("slots", step - 1))
                and not (self.track_level and table.acts("slot_gap", step - 1, "positive")))):
            return  # no row read a token with a beat period (step 0: the start token), no level to update
        period = self.tables.period.to(tokens.device)[tokens]  # (B,)
        if self.tables.relative:
            factor = self.tables.level_factor.to(tokens.device)[tokens]  # (B,) at the TempoLevel slot
            state["level_factor"] = torch.where(torch.isfinite(factor), factor, state["level_factor"])
            k = min(max(step - 1, 0), table["slot_scale"].shape[1] - 1)
            period = period * state["level_factor"] / table["slot_scale"][:, k]  # (B,) s per quarter
        state["period"] = torch.where(torch.isfinite(period), period, state["period"])
        # the token just read filled slot step - 1; rows without a gap there keep their level
        if self.track_level and step > 0 and table.acts("slot_gap", step - 1, "positive"):
            k = column(table["slot_gap"], step - 1)
            state["level"] = tempo_level_update(state["level"], period, table["slot_gap"][:, k],
                                                table["slot_scale"][:, k])

    def level_after(self, score_tokens: Sequence[str], perf_tokens: Sequence[str]) -> Tensor:
        """(4,) level state after ``perf_tokens`` (the performance of ``score_tokens``, the same bars;
        relative encoding: with its ``TempoLevel`` first), computed with the decoder's own update: the
        next segment's ``tempo_prior``."""
        gaps, scales = self.tempo_gaps(score_tokens)
        level = torch.zeros(1, LEVEL_FIELDS)
        period_of, factor_of = self.tables.period, self.tables.level_factor
        d = self.tables.tgt_dict
        factor = 1.0
        for tok, gap, scale in zip(perf_tokens, gaps, scales):
            if factor_of is not None and torch.isfinite(factor_of[d.index(tok)]):
                factor = float(factor_of[d.index(tok)])
            period = float(period_of[d.index(tok)]) if gap == gap else float("nan")  # NaN gap: no Tempo slot
            if factor_of is not None:
                period = period * factor / scale  # relative: at this slot's notated tempo and the level
            if period == period:
                level = tempo_level_update(level, torch.tensor([period]), torch.tensor([gap]),
                                           torch.tensor([scale]))
        return level[0]


class KeyDownFloor(DecodeRule):
    """No articulation that holds a note shorter than ``min_key_down_s`` at the latest tempo
    (``key_down_floor``; ``art_nominal_q`` gives each ``Art`` slot's notated quarters)."""

    def __init__(self, tables: TokenTables, art_nominal_q, min_key_down_s: float):
        if not (art_nominal_q and tables.value is not None):
            raise ValueError("--min-key-down-ms: the grammar module gives no art_nominal_q, beat_period_s "
                             "and token_value")
        self.tables, self.art_nominal_q, self.min_key_down_s = tables, art_nominal_q, float(min_key_down_s)
        self.columns = finite_columns(tables.value)  # (K,) the tokens with a value: the floor touches no other
        self.column_values = tables.value[self.columns]  # (K,) their log2 ratios

    def prepare(self, rows, device, priors):
        return {"slot_q": pad_rows([self.art_nominal_q(r) for r in rows], float("nan"), torch.float, device)}

    def __call__(self, logits, state, table, step):
        if not table.acts("slot_q", step):  # no row at an articulation slot
            return logits
        value = self.column_values.to(logits.device)  # (K,)
        return on_columns(logits, self.columns.to(logits.device), lambda sub: key_down_floor(
            sub, value, at_step(table["slot_q"], step), state["period"], self.min_key_down_s))


def planned_rows(plan: Optional[Tensor], n_rows: int) -> Tensor:
    """(B,) bool: the rows a tempo plan steers, those of the (B, G) ``tempo_plan`` prior (log factors per
    onset group, NaN padding) with a finite factor; all False without a prior."""
    if plan is None:
        return torch.zeros(n_rows, dtype=torch.bool)
    return torch.isfinite(plan.float().cpu()).any(1)  # (B,)


class TempoBand(DecodeRule):
    """Keep the windowed tempo level within ``band_bins`` of the reference (``tempo_band_penalty``): the
    notated tempo where the score states one (``anchor`` "notated"; no band elsewhere) or the level so far.
    Relative encoding: "notated" is the notated tempo x the level the row chose (``TempoLevel``), for
    every score, stated tempo or not.

    The band is the fallback for a row that no tempo plan steers: a row with a ``tempo_plan`` prior (the
    ``--tempo-plan`` rule's, from a checkpoint holding a plan) is left unchanged. With the plan on, the band
    measured no different on the test split and the benchmark (docs/experiments.md section 28); without a
    plan it keeps a sampled tempo from drifting (section 14)."""

    def __init__(self, tables: TokenTables, band_bins: float, anchor: str, states_tempo):
        if anchor == "notated" and states_tempo is None:
            raise ValueError("--tempo-anchor notated: the grammar module gives no states_tempo")
        self.tables, self.band_bins, self.anchor, self.states_tempo = tables, float(band_bins), anchor, states_tempo
        self.bin_log = tempo_bin_log(tables.period)
        self.columns = finite_columns(tables.period)  # (K,) the Tempo tokens: the band touches no other
        self.column_periods = tables.period[self.columns]  # (K,) their beat periods, s per quarter

    def prepare(self, rows, device, priors):
        out = {}
        planned = planned_rows(priors.get("tempo_plan"), len(rows))  # (B,) bool
        if bool(planned.any()):
            out["band_planned"] = planned.to(device)
        if self.anchor != "notated" or self.tables.relative:
            return out
        # 0.5 s per quarter: the notated tempo, in the level's units
        out["tempo_ref"] = torch.tensor([0.5 if self.states_tempo(r) else float("nan") for r in rows],
                                        device=device)  # (B,)
        return out

    def __call__(self, logits, state, table, step):
        if not table.acts("slot_gap", step, "positive"):  # no row at a Tempo slot with a gap to weigh
            return logits
        k = column(table["slot_gap"], step)
        period = self.column_periods.to(logits.device)  # (K,) s per quarter
        if self.tables.relative:  # a token's period x QPM / 120 is its period at 120 x the level factor
            ref = 0.5 * state["level_factor"] if self.anchor == "notated" else None  # (B,)
            scale = state["level_factor"]
        else:
            ref, scale = table.get("tempo_ref"), table["slot_scale"][:, k]
        if "band_planned" in table:  # a NaN reference leaves its row unchanged: the plan steers those rows
            ref = band_reference(state["level"], ref).masked_fill(table["band_planned"], float("nan"))  # (B,)
        return on_columns(logits, self.columns.to(logits.device), lambda sub: tempo_band_penalty(
            sub, period, state["level"], table["slot_gap"][:, k], scale, self.band_bins, self.bin_log, ref=ref))


class TempoPlanPrior(DecodeRule):
    """Multiply each onset group's tempo distribution by a Gaussian of ``sigma_bins`` tempo bins around the
    tempo plan's beat period for the gap that ends at that group (the gap its ``Tempo`` token times:
    ``tempo_plan.gap_factors``, applied by ``Renderer.plans_of``): a product of experts, the plan model's
    view of the whole piece (``museformer.tempo_plan``) with the decoder's view of a few bars. The plan
    comes with the segment as the ``tempo_plan`` prior, (B, G) log factors over the notated tempo per
    onset group of the segment (NaN: none); rows without one are unchanged. Absolute encoding: the centre
    is 60 / ``QPM`` x e^factor s per quarter; relative: the ``TempoRel`` token of e^factor (the plan
    relative to the level the row chose)."""

    def __init__(self, tables: TokenTables, sigma_bins: float, tempo_gaps):
        if tempo_gaps is None:
            raise ValueError("--tempo-plan: the grammar module gives no tempo_slot_gaps")
        self.tables, self.tempo_gaps = tables, tempo_gaps
        self.weight = 1.0 / (2.0 * float(sigma_bins) ** 2)  # logits lost per squared bin
        self.bin_log = tempo_bin_log(tables.period)
        self.columns = finite_columns(tables.period)  # (K,) the tempo tokens: the prior touches no other
        self.column_periods = tables.period[self.columns]  # (K,) their beat periods, s per quarter

    def prepare(self, rows, device, priors):
        plan = priors.get("tempo_plan")  # (B, G) or None
        if plan is None:
            return {}
        plan = plan.float().cpu()
        centres = []
        for i, row in enumerate(rows):
            gaps, scales = self.tempo_gaps(row)
            centre = [float("nan")] * len(gaps)
            groups = [k for k, gap in enumerate(gaps) if gap == gap]  # the tempo slots, one per onset group
            for g, k in enumerate(groups[: plan.shape[1]]):
                factor = float(plan[i, g])
                if factor == factor:  # the token's period: s per quarter (absolute), at 120 and level 1 (relative)
                    centre[k] = 0.5 * torch.exp(torch.tensor(factor)).item() / (1.0 if self.tables.relative else scales[k])
            centres.append(centre)
        return {"plan_period": pad_rows(centres, float("nan"), torch.float, device)}

    def __call__(self, logits, state, table, step):
        if "plan_period" not in table or not table.acts("plan_period", step):
            return logits
        centre = at_step(table["plan_period"], step)  # (B,) s per quarter; NaN: no plan at this slot
        period = self.column_periods.to(logits.device)  # (K,)
        dist = torch.log(period.unsqueeze(0) / centre.unsqueeze(1)) / self.bin_log  # (B, K) bins
        return on_columns(logits, self.columns.to(logits.device),
                          lambda sub: apply_prior(sub, self.weight * dist.square()))


class FermataHold(DecodeRule):
    """At a fermata's ``Tempo`` slot and the one after it (``fermata_slots``), move the tempo distribution
    ``lift_bins`` slower than the windowed level (``fermata_hold``)."""

    def __init__(self, tables: TokenTables, lift_bins: float, fermata_slots):
        if fermata_slots is None:
            raise ValueError("--fermata-hold: the grammar module gives no fermata_slots")
        self.tables, self.lift_bins, self.fermata_slots = tables, float(lift_bins), fermata_slots
        self.bin_log = tempo_bin_log(tables.period)
        finite = torch.isfinite(tables.period)
        ids = torch.nonzero(finite).squeeze(1)  # (N,)
        self.tempo_ids = ids[torch.argsort(tables.period[ids])]  # (N,) slowest last
        self.first_period = float(tables.period[self.tempo_ids[0]])

    def prepare(self, rows, device, priors):
        return {"slot_fermata": pad_rows([self.fermata_slots(r) for r in rows], False, torch.bool, device)}

    def __call__(self, logits, state, table, step):
        if not table.acts("slot_fermata", step, "true"):
            return logits
        k = column(table["slot_fermata"], step)
        held = table["slot_fermata"][:, k]  # (B,)
        first = self.first_period  # s per quarter of the first tempo token at this slot
        if self.tables.relative:  # (B,) at this slot's notated tempo and the row's level
            first = self.first_period * state["level_factor"] / table["slot_scale"][:, k]
        ref = fermata_reference_bin(state["level"], state["period"], table["slot_scale"][:, k],
                                    first, self.bin_log)  # (B,)
        return fermata_hold(logits, self.tempo_ids.to(logits.device), ref, self.lift_bins, held)


class DynamicsBand(DecodeRule):
    """Keep the 32-note velocity level within ``band_bins`` of the rendering's offset so far from the
    notated dynamics (``dynamics_band_penalty``; ``dynamics_refs`` gives each ``Vel`` slot's level)."""

    def __init__(self, tables: TokenTables, band_bins: float, dynamics_refs):
        if not (dynamics_refs and tables.value is not None):
            raise ValueError("--dynamics-band: the grammar module gives no dynamics_slot_refs and token_value")
        self.tables, self.band_bins, self.dynamics_refs = tables, float(band_bins), dynamics_refs

    def prepare(self, rows, device, priors):
        prior = priors.get("dynamics_prior")
        zeros = torch.zeros(len(rows), DYN_FIELDS, device=device)  # (B, 4)
        return {"slot_dyn": pad_rows([self.dynamics_refs(r) for r in rows], float("nan"), torch.float, device),
                "dynamics_prior": zeros if prior is None else prior.to(zeros)}

    def init_state(self, table, state):
        state["dyn"] = table["dynamics_prior"].clone()  # (B, 4)

    def update(self, state, tokens, step, table):
        # the token just read filled slot step - 1; rows without a notated level there keep their state
        if step > 0 and table.acts("slot_dyn", step - 1):
            k = column(table["slot_dyn"], step - 1)
            value = self.tables.value.to(tokens.device)[tokens]  # (B,) velocity bin at a Vel slot
            state["dyn"] = dynamics_level_update(state["dyn"], value, table["slot_dyn"][:, k])

    def __call__(self, logits, state, table, step):
        if not table.acts("slot_dyn", step):  # no row at a Vel slot with a notated level
            return logits
        return dynamics_band_penalty(logits, self.tables.value.to(logits.device), state["dyn"],
                                     at_step(table["slot_dyn"], step), self.band_bins)

    def dynamics_after(self, score_tokens: Sequence[str], perf_tokens: Sequence[str]) -> Tensor:
        """(4,) dynamics state after ``perf_tokens`` (the performance of ``score_tokens``), computed with
        the decoder's own update: the next segment's ``dynamics_prior``."""
        dyn = torch.zeros(1, DYN_FIELDS)
        d = self.tables.tgt_dict
        for tok, ref in zip(perf_tokens, self.dynamics_refs(score_tokens)):
            if ref == ref:  # a Vel slot with a notated level
                value = self.tables.value[d.index(tok)].view(1)
                dyn = dynamics_level_update(dyn, value, torch.tensor([ref]))
        return dyn[0]


class NotePlanPrior(DecodeRule):
    """Multiply each note's distribution over the ``SLOT`` tokens by a Gaussian of ``sigma_bins`` bins
    around a per-note plan's value for that note: the plan's view of the whole score with the decoder's of
    a few bars. The plan comes with the segment as the ``PRIOR`` prior, (B, N) values per score note of
    the segment (NaN: none); rows without one are unchanged, and so is every token without a value (the
    deletion token). A subclass names the slot, the prior and how a plan value maps to the tokens' scale."""

    SLOT, PRIOR, FLAG = "", "", ""
    BIN = 1.0  # one bin on the tokens' value scale (token_value)

    def __init__(self, tables: TokenTables, sigma_bins: float, note_values_at):
        if not (note_values_at and tables.value is not None):
            raise ValueError(f"{self.FLAG}: the grammar module gives no note_values_at and token_value")
        self.tables, self.note_values_at = tables, note_values_at
        self.weight = 1.0 / (2.0 * (float(sigma_bins) * self.BIN) ** 2)  # logits lost per squared value unit
        cols = [i for i, t in enumerate(tables.types) if t == self.SLOT and bool(torch.isfinite(tables.value[i]))]
        self.columns = torch.tensor(cols, dtype=torch.long)  # (K,) the slot's tokens: the prior touches no other
        self.column_values = tables.value[self.columns]  # (K,) their values

    def token_scale(self, plan: Tensor) -> Tensor:
        """(N,) plan values -> (N,) the same on the tokens' value scale."""
        return plan

    def prepare(self, rows, device, priors):
        plan = priors.get(self.PRIOR)  # (B, N) or None
        if plan is None:
            return {}
        plan = plan.float().cpu()
        centres = [self.note_values_at(row, self.SLOT, self.token_scale(plan[i]).tolist(), float("nan"))
                   for i, row in enumerate(rows)]
        return {self.PRIOR: pad_rows(centres, float("nan"), torch.float, device)}

    def __call__(self, logits, state, table, step):
        if self.PRIOR not in table or not table.acts(self.PRIOR, step):
            return logits
        centre = at_step(table[self.PRIOR], step)  # (B,) on the tokens' scale; NaN: no plan here
        value = self.column_values.to(logits.device)  # (K,)
        penalty = self.weight * (value.unsqueeze(0) - centre.unsqueeze(1)).square()  # (B, K)
        return on_columns(logits, self.columns.to(logits.device), lambda sub: apply_prior(sub, penalty))


class VelocityPlanPrior(NotePlanPrior):
    """``--velocity-plan``: at each ``Vel`` slot, a Gaussian of ``sigma_bins`` velocity bins (2 MIDI
    velocities each) around the velocity plan's MIDI velocity for that note (``museformer.velocity_plan``)."""

    SLOT, PRIOR, FLAG = VEL, "velocity_plan", "--velocity-plan"

    def token_scale(self, plan: Tensor) -> Tensor:
        return (plan - (VEL_STEP - 1) / 2) / VEL_STEP  # fractional bin: bin b spans 2b, 2b + 1


class ArticulationPlanPrior(NotePlanPrior):
    """``--articulation-plan``: at each ``Art`` slot, a Gaussian of ``sigma_bins`` articulation bins
    (``ART_STEP`` = 0.04 in log2, 2.8 %) around the articulation plan's log2(key-down / notated at the local
    tempo) for that note (``museformer.velocity_plan.ArticulationPlan``)."""

    SLOT, PRIOR, FLAG = ART, "articulation_plan", "--articulation-plan"
    BIN = ART_STEP

    def __init__(self, tables: TokenTables, sigma_bins: float, note_values_at, network_weight: float = 1.0):
        super().__init__(tables, sigma_bins, note_values_at)
        self.network_weight = float(network_weight)  # --articulation-network: the network's Art logits times it

    def __call__(self, logits, state, table, step):
        if self.network_weight != 1.0 and self.PRIOR in table and table.acts(self.PRIOR, step):
            planned = torch.isfinite(at_step(table[self.PRIOR], step)).view(-1, 1, 1)  # (B, 1, 1)
            weight = self.network_weight
            logits = on_columns(logits, self.columns.to(logits.device),
                                lambda sub: torch.where(planned & torch.isfinite(sub), sub * weight, sub))
        return super().__call__(logits, state, table, step)


class TimingPlanPrior(NotePlanPrior):
    """``--timing-plan``: at each ``Time`` slot, a Gaussian of ``sigma_ms`` milliseconds around the timing
    plan's onset for that note against its onset group's grid (``museformer.velocity_plan.TimingPlan``; a
    ``Time`` token's value is its deviation in ms, ``grammar.token_value``)."""

    SLOT, PRIOR, FLAG = TIME, "timing_plan", "--timing-plan"


class ExpectedValue(DecodeRule):
    """For the types set to "mean" (``--type-temperature Vel=mean``), only the token nearest the expected
    value stays choosable (``expected_value_choice``)."""

    def __init__(self, tables: TokenTables, mean_types: Sequence[str], grammar_table: Tensor):
        self.tables = tables
        self.mean = torch.zeros(len(tables.names), dtype=torch.bool)  # per type id
        for name in mean_types:
            has_value = grammar_table[tables.type_id[name]] & torch.isfinite(tables.value)
            if not has_value.any():
                raise ValueError(f"--type-temperature: {name}=mean needs a type with numeric values")
            self.mean[tables.type_id[name]] = True

    def __call__(self, logits, state, table, step):
        rows = self.mean.to(logits.device)[at_step(table["slots"], step)].view(-1, 1, 1)  # (B, 1, 1)
        if not rows.any():
            return logits
        choice = expected_value_choice(logits, self.tables.value.to(logits.device))
        return torch.where(rows, choice, logits)


class UnisonsOnce(DecodeRule):
    """The slots ``slots_of`` marks (a unison's repeated pitch) take exactly ``token`` (the deletion token)."""

    def __init__(self, token_id: int, slots_of):
        self.token_id, self.slots_of = token_id, slots_of

    def prepare(self, rows, device, priors):
        return {"slot_once": pad_rows([self.slots_of(r) for r in rows], False, torch.bool, device)}

    def __call__(self, logits, state, table, step):
        if not table.acts("slot_once", step, "true"):
            return logits
        once = at_step(table["slot_once"], step)  # (B,)
        only = logits.masked_fill(torch.isfinite(logits), FORCEABLE_LOGIT)  # (B, 1, V)
        only[..., self.token_id] = 0.0
        return torch.where(once.view(-1, 1, 1), only, logits)


class TypeTemperature(DecodeRule):
    """Divide each step's logits by its type's temperature relative to ``--temperature``."""

    def __init__(self, tables: TokenTables, temperatures: Dict[str, float]):
        self.type_id = tables.type_id
        self.scale = torch.ones(len(tables.names))  # per type id: 1 / relative temperature
        for name, t in temperatures.items():
            self.scale[tables.type_id[name]] = 1.0 / t

    def __call__(self, logits, state, table, step):
        col = at_step(table["slots"], step)  # (B,)
        return logits * self.scale.to(logits.device, logits.dtype)[col].view(-1, 1, 1)  # (B, 1, V)


def tempo_bin_log(period: Tensor) -> float:
    """The log period ratio of one tempo bin (the median step between the tokens' periods)."""
    logs = torch.log(period[torch.isfinite(period)]).unique()  # sorted
    return float(logs.diff().median())


class DecodeRules:
    """The ordered list of rules for one :class:`DecodeConfig` and one pair of dictionaries."""

    def __init__(self, rules: List[DecodeRule], config: DecodeConfig, module):
        self.rules, self.config, self.module = rules, config, module
        self._draw_columns: Dict[int, tuple] = {}  # id(candidates) -> (candidates, draw columns)
        self._made_finite = [rule.token_id for rule in rules if isinstance(rule, UnisonsOnce)]  # outside candidates

    def __iter__(self):
        return iter(self.rules)

    def get(self, kind: type) -> Optional[DecodeRule]:
        """The rule of that class in the list, or None."""
        return next((r for r in self.rules if isinstance(r, kind)), None)

    @classmethod
    def build(cls, config: DecodeConfig, src_dict, tgt_dict,
              grammar: str = "instruct_tokenizer.grammar") -> "DecodeRules":
        """The rules the config turns on, in their order. Raises ValueError naming the flag of a bad setting."""
        config.check()
        module = importlib.import_module(grammar)
        relative = uses_relative_tempo(module, tgt_dict)
        module = grammar_for(module, relative)
        tables = TokenTables(tgt_dict, module)
        deletion = getattr(module, "DELETION", None)
        forbidden = [deletion] if deletion and config.no_deletions else []
        mask = GrammarMask(tables, module.target_slots, forbidden)
        rules: List[DecodeRule] = [mask]
        needs_period = config.min_key_down_ms > 0 or config.tracks_level
        if needs_period:
            rules.append(TempoState(tables, getattr(module, "tempo_slot_gaps", None), config.tracks_level))
        if config.min_key_down_ms > 0:
            rules.append(KeyDownFloor(tables, getattr(module, "art_nominal_q", None), config.min_key_down_ms / 1000.0))
        if config.tempo_band > 0:
            rules.append(TempoBand(tables, config.tempo_band, config.tempo_anchor, getattr(module, "states_tempo", None)))
        if config.tempo_plan > 0:
            rules.append(TempoPlanPrior(tables, config.tempo_plan, getattr(module, "tempo_slot_gaps", None)))
        if config.fermata_hold > 0:
            rules.append(FermataHold(tables, config.fermata_hold, getattr(module, "fermata_slots", None)))
        if config.dynamics_band > 0:
            rules.append(DynamicsBand(tables, config.dynamics_band, dynamics_refs_of(module)))
        if config.velocity_plan > 0:
            rules.append(VelocityPlanPrior(tables, config.velocity_plan, getattr(module, "note_values_at", None)))
        if config.articulation_plan > 0:
            rules.append(ArticulationPlanPrior(tables, config.articulation_plan,
                                               getattr(module, "note_values_at", None), config.articulation_network))
        if config.timing_plan > 0:
            rules.append(TimingPlanPrior(tables, config.timing_plan, getattr(module, "note_values_at", None)))
        type_temperature = parse_type_temperature(config.type_temperature)
        unknown = sorted(set(type_temperature) - set(tables.names))
        if unknown:
            raise ValueError(f"--type-temperature: unknown token types {', '.join(unknown)}")
        mean_types = sorted(n for n, t in type_temperature.items() if t == MEAN)
        if relative and config.tempo_level == MEAN and TEMPO_LEVEL_TYPE not in type_temperature:
            mean_types.append(TEMPO_LEVEL_TYPE)  # --tempo-level mean
        if mean_types:
            rules.append(ExpectedValue(tables, mean_types, mask.table))
        if config.unisons_once:
            unisons = getattr(module, "unison_repeats", None)
            if not (deletion and unisons):
                raise ValueError("--unisons-once: the grammar module lacks DELETION or unison_repeats")
            if tgt_dict.index(deletion) != tgt_dict.unk():
                rules.append(UnisonsOnce(tgt_dict.index(deletion), unisons))
        temperatures = {n: t for n, t in type_temperature.items() if t != MEAN}
        if any(t <= 0 for t in temperatures.values()):
            raise ValueError("--type-temperature: temperatures must be > 0")
        if temperatures:
            rules.append(TypeTemperature(tables, temperatures))
        return cls(rules, config, module)

    # ------------------------------------------------------------------ what the model calls
    def prepare(self, src_tokens: Tensor, valid: Tensor, src_dict,
                priors: Optional[Dict[str, Optional[Tensor]]] = None) -> SlotTable:
        """(B, T) source ids -> the rules' per-slot tables (padding and EOS left out of the score rows);
        ``priors``: the (B, 4) states of the music before each segment (``tempo_prior``, ``dynamics_prior``)."""
        eos = src_dict.eos()
        rows = [[src_dict[i] for i, k in zip(ids, ok) if k and i != eos]
                for ids, ok in zip(src_tokens.tolist(), valid.tolist())]
        priors = {k: v for k, v in (priors or {}).items() if v is not None}
        table = SlotTable()
        for rule in self.rules:
            table.update(rule.prepare(rows, src_tokens.device, priors))
        return table

    def init_state(self, table: SlotTable) -> DecodeState:
        state = DecodeState()
        for rule in self.rules:
            rule.init_state(table, state)
        return state

    def update(self, state: DecodeState, tokens: Tensor, step: int, table: SlotTable) -> None:
        """After reading ``tokens`` (B,), the token at decoder position ``step`` (it filled slot step - 1)."""
        for rule in self.rules:
            rule.update(state, tokens, step, table)

    def candidates(self, table: SlotTable, step: int) -> Tensor:
        """(K,) the tokens the grammar lets any row take at ``step``: the only logits the rules can leave
        finite but for the unison rule's deletion token, which it sets itself (the decoder computes no
        others)."""
        return self.rules[0].candidates(table, step)  # the grammar mask, always first

    def draw_columns(self, candidates: Tensor) -> Tensor:
        """(K',) ascending: ``candidates`` and every token outside them that a rule may make finite (the
        unison rule's deletion token): after the rules, every other logit is -inf (cached per
        ``candidates`` tensor, as the grammar caches those)."""
        key = id(candidates)
        cached = self._draw_columns.get(key)
        if cached is None or cached[0] is not candidates:
            extra = self._made_finite
            cols = torch.unique(torch.cat([candidates, candidates.new_tensor(extra)])) if extra else candidates
            cached = self._draw_columns[key] = (candidates, cols)
        return cached[1]

    def __call__(self, logits: Tensor, state: DecodeState, table: SlotTable, step: int,
                 candidates_only: bool = False) -> Tensor:
        """(B, 1, V) logits of step ``step`` -> the logits every rule adjusted, in order.
        ``candidates_only``: the logits are -inf but for :meth:`candidates` (the decoder computed only
        those); where the step's column holds one slot type the grammar mask would change nothing, and
        is skipped."""
        rules = self.rules
        if candidates_only and len(table.values_at("slots", step)) == 1:
            rules = rules[1:]  # the grammar mask, always first
        for rule in rules:
            logits = rule(logits, state, table, step)
        return logits

    # ------------------------------------------------------------------ across segments
    def state_after(self, score_tokens: Sequence[str], perf_tokens: Sequence[str]) -> Dict[str, Tensor]:
        """The (4,) states after ``perf_tokens`` (the performance of ``score_tokens``, the same bars) that
        the next segment starts from: ``tempo_prior`` where the level is tracked, ``dynamics_prior`` where
        the dynamics band is on."""
        out: Dict[str, Tensor] = {}
        tempo = self.get(TempoState)
        if tempo is not None and tempo.track_level:
            out["tempo_prior"] = tempo.level_after(score_tokens, perf_tokens)
        dynamics = self.get(DynamicsBand)
        if dynamics is not None:
            out["dynamics_prior"] = dynamics.dynamics_after(score_tokens, perf_tokens)
        return out


def dynamics_refs_of(module) -> Optional[Callable]:
    """The dynamics band's reference: the grammar module's ``dynamics_slot_refs``, else the markings
    baseline's (``instruct_tokenizer.markings_baseline.dynamics_slot_refs``)."""
    refs = getattr(module, "dynamics_slot_refs", None)
    if refs is None:
        from instruct_tokenizer.markings_baseline import dynamics_slot_refs as refs
    return refs
