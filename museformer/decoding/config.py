"""``DecodeConfig``: every decoding rule's setting, its command-line flag, its defaults and its help,
declared once. ``instruct-render``, ``instruct-eval``, ``scripts/bench_quality.py`` (profile "render":
the rules on at their measured defaults) and the fairseq task (profile "task": every rule off, as
fairseq's own generation expects) all build their flags from it with :meth:`DecodeConfig.add_args` and
read them back with :meth:`DecodeConfig.from_args`.

The defaults of the "render" profile are measurements (docs/decoding.md has the figures behind each):
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

# Key-down floor (--min-key-down-ms): a rendered note is held at least this long. The 1st percentile of the
# key-down durations of the (n)ASAP training performances (327,000 notes, every 12th training line decoded) is
# 24.8 ms; 0.24 % of them are under 20 ms. Sampled freely the model's Art tokens put 4 % of the notes of the
# test split under 20 ms even with the human tempo given (docs/decoding.md).
MIN_KEY_DOWN_MS = 25.0
# Tempo band (--tempo-band / --tempo-anchor): keep the 8-quarter tempo level within 12 bins (x1.42) of the
# notated tempo where the score states one. A line's human level lies within 12 bins of a stated notated tempo
# in 85 % of the (n)ASAP training lines (scripts/tempo_level_stats.py); on the benchmark's whole pieces it
# shortened the too-long renderings (median length / human 1.30 -> 1.18 with seed 0, 1.13 -> 1.10 with seed 1)
# and lowered duration and IOI JS on both seeds (docs/experiments.md). It acts only where no tempo plan steers the
# rendering (a checkpoint without a plan, or --tempo-plan 0): with the release's plan on, the band measured no
# different (test split beat tempo r 0.484 with it, 0.488 without; benchmark overall JS 0.099 / 0.104 with it,
# 0.100 / 0.104 without, the same lengths; docs/experiments.md section 28).
TEMPO_BAND_BINS = 12.0
TEMPO_ANCHOR = "notated"
TEMPO_ANCHORS = ("notated", "self")
# Fermata hold (--fermata-hold): at the Tempo slot of an onset group holding a Mark_fermata note and of the
# group after it (whose Tempo encodes the held gap), the expected beat period is at least this many tempo bins
# (2.9 % steps: 15 bins is x1.54) slower than the 8-quarter level before it. Over the (n)ASAP training lines,
# the human lift over that reference has a median of +16.4 bins at the fermata's own group (1,049 fermatas) and
# +15.7 at the group after it (859) (scripts/fermata_lift.py --human-window --split train).
FERMATA_HOLD_BINS = 15.0
# Dynamics band (--dynamics-band): the windowed velocity level follows the notated dynamics' contour
# (instruct_tokenizer.markings_baseline.dynamics_slot_refs) within BINS velocity bins of the rendering's own offset.
# Off by default since the velocity plan (which reads the dynamics over the whole score): on the 10 validation
# pieces with every plan on, 4 bins gave velocity JS 0.153 and velocity r 0.508, off 0.093 and 0.512
# (docs/experiments.md section 19); 4 was the default before.
DYNAMICS_BAND_BINS = 0.0
# Tempo level (--tempo-level): a relative-tempo model chooses its level over the notated tempo once per piece
# (TempoLevel). Drawn, one token set the whole piece's pace by chance (Vienna 4x22 K331/1, three seeds: 0.57 to
# 1.24 of the pianists' median); at the expected value it is the model's best guess for the score
# (docs/experiments.md, section 11).
# Tempo plan (--tempo-plan): each Tempo token's probability times a Gaussian of this many tempo bins (2.9 % steps)
# around the tempo plan's beat period for the gap that ends at its onset group (museformer.tempo_plan: a network
# that reads the whole score; tempo_plan.gap_factors: until 2026-12-07 the group's own beat, one group early).
# Chosen on the 10 validation pieces spread across composers: 4 against 6, 8 and off with one plan
# (docs/experiments.md section 18), 3 against 4 with the mean of three plans (section 19: beat tempo r 0.480 ->
# 0.507, IOI JS 0.145 -> 0.152, overall JS 0.163 -> 0.165); 2 against 3 and 4 once the prior was centred on the
# gap (section 41: validation beat tempo r 0.561 / 0.546 / 0.528, overall JS 0.094 / 0.092 / 0.094; Vienna K331
# and D783 higher on every seed).
TEMPO_PLAN_BINS = 2.0
# Velocity plan (--velocity-plan): each note's velocity probability times a Gaussian of this many velocity bins
# (2 MIDI velocities each) around the velocity plan's velocity for it (museformer.velocity_plan). Chosen on the same
# validation pieces (3 against 2, 4 and 5); test split sampled velocity r 0.256 -> 0.543, benchmark velocity JS
# 0.113 -> 0.144 from score MIDI (seed 0): a trade (docs/experiments.md section 18).
VELOCITY_PLAN_BINS = 3.0
# Articulation plan (--articulation-plan): each note's Art probability times a Gaussian of this many Art bins
# (0.04 in log2, 2.8 %) around the articulation plan's log2(key-down / notated at the local tempo) for it
# (museformer.velocity_plan.ArticulationPlan).
ARTICULATION_PLAN_BINS = 10.0
# The network's weight in each planned note's articulation (--articulation-network): its Art logits times
# this before the plan's Gaussian multiplies them (1: the distribution as trained). The product of the two
# is narrower than the pianists' key-downs (validation, score MIDI view: log2 standard deviation 1.24
# against 1.33); 0.25-0.5 widened it there with a lower duration JS, but on the benchmark's score MIDI the
# duration JS rose (0.111 -> 0.120 at 0.25, seed 0) and the held share stayed: the default stays 1
# (docs/experiments.md section 33).
ARTICULATION_NETWORK = 1.0
# Timing plan (--timing-plan): each note's Time probability times a Gaussian of this many ms around the timing
# plan's onset for it against its onset group's grid (museformer.velocity_plan.TimingPlan), on the notes the plan
# puts at least its min_ms (25) off the grid: grace notes, rolled chords. Chosen on the validation pieces (thresholds
# 5, 10, 25 ms at 10 ms; 15 and 20 ms over a 10 ms threshold; every note at 10, 20, 40 ms): IOI JS 0.115 / 0.106 ->
# 0.104 / 0.095 on two seeds, where planning every note set a chord's notes together (0.239 at 10 ms)
# (docs/experiments.md section 44).
TIMING_PLAN_MS = 10.0
TEMPO_LEVEL = "mean"
TEMPO_LEVELS = ("mean", "sample")

PROFILES = ("render", "task")


def _flag(name: str, help: str, render: Any, task: Any, *, type: Optional[type] = None, metavar: str = "",
          choices: Optional[tuple] = None, off_flag: str = "", profiles: tuple = PROFILES):
    """A field of DecodeConfig: its flag, help, and default per profile. A boolean's ``name`` turns it on
    and ``off_flag`` off; the parser offers whichever changes that profile's default."""
    meta = dict(flag=name, help=help, defaults={"render": render, "task": task}, type=type, metavar=metavar,
                choices=choices, off_flag=off_flag, profiles=profiles)
    return field(default=render, metadata=meta)


@dataclass
class DecodeConfig:
    """What the decoding rules do (``museformer.decoding.rules``); units as in each flag's help."""

    constrained: bool = _flag(
        "--constrained", "generate with the performance grammar (one token type per slot, EOS after the "
        "last): always, except for ablations", True, True, off_flag="--unconstrained", profiles=("task",))
    no_deletions: bool = _flag(
        "--no-deletions", "never generate the grammar's deletion token (Vel_Del: every score note is "
        "played), except where --unisons-once asks for it", True, False, off_flag="--allow-deletions")
    unisons_once: bool = _flag(
        "--unisons-once", "a pitch that several notes of one onset share (voices in unison) is struck once, "
        "as on a piano: all but its longest note take the deletion token", True, False, off_flag="--keep-unisons")
    type_temperature: str = _flag(
        "--type-temperature", "per-type sampling temperature relative to --temperature, e.g. Tempo=0.7 "
        "(steadier tempo); TYPE=mean takes the bin nearest the model's expected value (Tempo, Vel, Time, Art)",
        "", "", type=str, metavar="TYPE=T,...")
    min_key_down_ms: float = _flag(
        "--min-key-down-ms", f"hold no note shorter than MS milliseconds at the generated tempo (0: off; "
        f"instruct-render's default {MIN_KEY_DOWN_MS:g} is the 1st percentile of the training performances' "
        f"key-down times)", MIN_KEY_DOWN_MS, 0.0, type=float, metavar="MS")
    tempo_band: float = _flag(
        "--tempo-band", "keep the tempo level over about 8 quarters within BINS tempo bins (3%% steps) of the "
        f"reference (--tempo-anchor), after the first 16 quarters, where no tempo plan steers the rendering (a "
        f"checkpoint without a plan, or --tempo-plan 0): a soft Gaussian prior against tempo drift "
        f"(0: off; instruct-render's default {TEMPO_BAND_BINS:g})", TEMPO_BAND_BINS, 0.0, type=float,
        metavar="BINS")
    tempo_anchor: str = _flag(
        "--tempo-anchor", "what --tempo-band centres on: the notated tempo where the score states one other "
        "than 120, no band elsewhere (notated), or the rendering's own level so far (self)",
        TEMPO_ANCHOR, TEMPO_ANCHOR, type=str, choices=TEMPO_ANCHORS)
    fermata_hold: float = _flag(
        "--fermata-hold", "play a fermata's onset and the onset after it (the held gap) at least BINS tempo "
        "bins (2.9%% steps) slower than the 8 quarters before, in expectation (0: off; instruct-render's "
        f"default {FERMATA_HOLD_BINS:g}, the training performances' median; needs MusicXML markings)",
        FERMATA_HOLD_BINS, 0.0, type=float, metavar="BINS")
    dynamics_band: float = _flag(
        "--dynamics-band", "keep the velocity level over about 32 notes within BINS velocity bins (2 MIDI "
        "velocities each) of the rendering's offset so far from the notated dynamics, after the first 32 "
        f"notes (0: off; instruct-render's default {DYNAMICS_BAND_BINS:g}; needs MusicXML dynamics)",
        DYNAMICS_BAND_BINS, 0.0, type=float, metavar="BINS")
    tempo_plan: float = _flag(
        "--tempo-plan", "multiply each onset group's tempo distribution by a Gaussian of BINS tempo bins (2.9%% "
        "steps) around the tempo plan's beat period for the gap that ends at it (the notated tempo x the plan "
        "model's factor, from the whole score: museformer.tempo_plan; the checkpoint must hold a plan; 0: off; "
        "instruct-render's "
        f"default {TEMPO_PLAN_BINS:g})", TEMPO_PLAN_BINS, 0.0, type=float, metavar="BINS")
    velocity_plan: float = _flag(
        "--velocity-plan", "multiply each note's velocity distribution by a Gaussian of BINS velocity bins (2 MIDI "
        "velocities each) around the velocity plan's velocity for it (from the whole score: "
        "museformer.velocity_plan; the checkpoint must hold a plan; 0: off; instruct-render's default "
        f"{VELOCITY_PLAN_BINS:g})", VELOCITY_PLAN_BINS, 0.0, type=float, metavar="BINS")
    articulation_plan: float = _flag(
        "--articulation-plan", "multiply each note's articulation distribution by a Gaussian of BINS Art bins "
        "(0.04 in log2 each) around the articulation plan's key-down time for it (log2 of the notated length at "
        "the local tempo, from the whole score: museformer.velocity_plan; the checkpoint must hold a plan; 0: off; "
        f"instruct-render's default {ARTICULATION_PLAN_BINS:g})", ARTICULATION_PLAN_BINS, 0.0, type=float,
        metavar="BINS")
    timing_plan: float = _flag(
        "--timing-plan", "multiply each note's timing distribution by a Gaussian of MS milliseconds around the "
        "timing plan's onset for it against its onset group's grid (grace notes before the beat, a chord's "
        "top note ahead, wide chords rolled; from the whole score: museformer.velocity_plan.TimingPlan; the "
        f"checkpoint must hold one; 0: off; instruct-render's default {TIMING_PLAN_MS:g})", TIMING_PLAN_MS, 0.0,
        type=float, metavar="MS")
    articulation_network: float = _flag(
        "--articulation-network", "where the articulation plan acts, multiply the network's Art logits by W "
        "before the plan's Gaussian (1: the network's distribution as trained; below 1 the key-downs spread "
        "wider, toward the plan's Gaussian alone at 0; instruct-render's default "
        f"{ARTICULATION_NETWORK:g})", ARTICULATION_NETWORK, 1.0, type=float, metavar="W")

    tempo_level: str = _flag(
        "--tempo-level", "a relative-tempo model's TempoLevel (its tempo over the notated one, chosen once per "
        "piece): the token nearest the expected value (mean) or a draw (sample); an absolute-tempo model has "
        f"none (instruct-render's default {TEMPO_LEVEL})", TEMPO_LEVEL, "sample", type=str, choices=TEMPO_LEVELS)

    @classmethod
    def defaults(cls, profile: str = "render") -> "DecodeConfig":
        """The profile's defaults: "render" (instruct-render, instruct-eval, the benchmark) or "task"."""
        if profile not in PROFILES:
            raise ValueError(f"DecodeConfig: unknown profile {profile!r} ({', '.join(PROFILES)})")
        return cls(**{f.name: f.metadata["defaults"][profile] for f in dataclasses.fields(cls)})

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser, profile: str = "render") -> None:
        """Add every rule's flag with that profile's default (a boolean: the flag that changes it)."""
        base = cls.defaults(profile)
        for f in dataclasses.fields(cls):
            m = f.metadata
            if profile not in m["profiles"]:
                continue
            default = getattr(base, f.name)
            if f.type in (bool, "bool"):
                flag = m["off_flag"] if default else m["flag"]
                parser.add_argument(flag, dest=f.name, action="store_false" if default else "store_true",
                                    default=default, help=m["help"] + (" (the default is on)" if default else ""))
                continue
            kw: Dict[str, Any] = dict(dest=f.name, type=m["type"], default=default, help=m["help"])
            if m["metavar"]:
                kw["metavar"] = m["metavar"]
            if m["choices"]:
                kw["choices"] = list(m["choices"])
            parser.add_argument(m["flag"], **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace, profile: str = "render") -> "DecodeConfig":
        """The config an argparse namespace holds; a field it lacks keeps the profile's default (a
        checkpoint's stored args, say, which predate a rule)."""
        base = cls.defaults(profile)
        values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
        return dataclasses.replace(base, **{k: v for k, v in values.items() if v is not None})

    def replace(self, **changes: Any) -> "DecodeConfig":
        """A copy with some fields changed; an unknown name is a ValueError naming it."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"DecodeConfig: unknown settings {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """Raise ValueError naming the flag of a setting out of range."""
        for name, flag in (("min_key_down_ms", "--min-key-down-ms"), ("tempo_band", "--tempo-band"),
                           ("fermata_hold", "--fermata-hold"), ("dynamics_band", "--dynamics-band"),
                           ("tempo_plan", "--tempo-plan"), ("velocity_plan", "--velocity-plan"),
                           ("articulation_plan", "--articulation-plan"),
                           ("articulation_network", "--articulation-network"), ("timing_plan", "--timing-plan")):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{flag}: must be >= 0")
        if self.tempo_level not in TEMPO_LEVELS:
            raise ValueError(f"--tempo-level: expected one of {', '.join(TEMPO_LEVELS)}, got {self.tempo_level!r}")
        if self.tempo_anchor not in TEMPO_ANCHORS:
            raise ValueError(f"--tempo-anchor: expected one of {', '.join(TEMPO_ANCHORS)}, got {self.tempo_anchor!r}")

    @property
    def tracks_level(self) -> bool:
        """Whether decoding keeps the tempo level state (the tempo band and the fermata hold read it)."""
        return self.tempo_band > 0 or self.fermata_hold > 0
