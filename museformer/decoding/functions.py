"""The decoding rules' arithmetic: pure functions of tensors (logits, per-token numbers, per-row
state), each with its units and an example; the rule classes in ``rules.py`` call them."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from .. import native

FORCEABLE_LOGIT = -80.0  # logit of a token the grammar allows but decoding never picks (the other tokens
# of a "mean" slot, articulations under the key-down floor, the velocities of a unison's repeated pitch):
# exp(-80) ~ 2e-35 is never sampled, yet a
# positive float32 probability, so that fairseq can still force one of them as a prefix token (a
# segment's overlap bars) and sample the row (a probability of 0 there fails torch.multinomial)


def expected_value_choice(logits: Tensor, value: Tensor) -> Tensor:
    """(B, 1, V) masked logits, (V,) token numbers (NaN: none) -> (B, 1, V) logits that put all the
    mass on the numbered token nearest the expected number under softmax(logits) over the allowed
    numbered tokens: the minimum-squared-error point estimate, on the token's scale (a bin, ms, log2
    ratio). The other allowed tokens get ``FORCEABLE_LOGIT`` (finite: still forceable), the rest stay -inf."""
    allowed = torch.isfinite(logits)  # (B, 1, V)
    ok = allowed & torch.isfinite(value)  # (B, 1, V)
    p = torch.softmax(logits.float().masked_fill(~ok, float("-inf")), dim=-1)  # (B, 1, V)
    mean = (p.nan_to_num(0.0) * value.nan_to_num(0.0)).sum(-1, keepdim=True)  # (B, 1, 1)
    dist = (value - mean).abs().masked_fill(~ok, float("inf"))  # (B, 1, V)
    best = dist.argmin(-1, keepdim=True)  # (B, 1, 1)
    out = torch.full_like(logits, float("-inf")).masked_fill(allowed, FORCEABLE_LOGIT)
    return out.scatter(-1, best, 0.0)


def key_down_floor(logits: Tensor, value: Tensor, nominal_q: Tensor, period_s: Tensor,
                   min_key_down_s: float) -> Tensor:
    """:func:`key_down_floor_reference`, in C++ operator for operator where ``museformer.native`` is loaded."""
    fast = native.loaded()
    if fast is not None and logits.device.type == "cpu":
        return fast.key_down_floor(logits, value, nominal_q, period_s, float(min_key_down_s), FORCEABLE_LOGIT)
    return key_down_floor_reference(logits, value, nominal_q, period_s, min_key_down_s)


def key_down_floor_reference(logits: Tensor, value: Tensor, nominal_q: Tensor, period_s: Tensor,
                             min_key_down_s: float) -> Tensor:
    """(B, 1, V) masked logits of an articulation step, (V,) token log2 ratios (NaN: none), (B,) notated
    quarters (NaN: the row's step is no articulation slot, left as it is), (B,) beat period (s per
    quarter) -> logits where every allowed articulation that holds the note shorter than
    ``min_key_down_s`` (key-down 2 ** value x nominal_q x period_s seconds) gets ``FORCEABLE_LOGIT``
    (never picked, still forceable). When all of them would, the longest stays allowed. Example: an
    eighth note (0.5 quarter) at 0.2 s per quarter and a 25 ms floor keeps log2 ratios >= -2."""
    allowed = torch.isfinite(logits) & torch.isfinite(value)  # (B, 1, V)
    longest = value.masked_fill(~allowed, float("-inf")).amax(-1)  # (B, 1)
    floor = torch.log2(min_key_down_s / (nominal_q * period_s)).unsqueeze(1)  # (B, 1) log2 ratio; NaN: off
    floor = torch.minimum(floor, longest)  # (B, 1)
    too_short = allowed & (value < floor.unsqueeze(-1) - 1e-6)  # (B, 1, V); NaN floor compares False
    return logits.masked_fill(too_short, FORCEABLE_LOGIT)


# The tempo band (--tempo-band BINS): keeps the windowed tempo level near a reference (--tempo-anchor).
TEMPO_BAND_TAU_Q = 8.0  # quarters: time constant of the windowed (exponentially weighted) tempo level
TEMPO_BAND_WARMUP_Q = 16.0  # quarters of music decoded before the band applies (the opening sets the level)
TEMPO_BAND_GAIN = 0.002  # prior curvature (logit per squared tempo bin) per bin that the window lies outside
TEMPO_BAND_MAX_CURVE = 1.0 / (2 * 4.0 ** 2)  # at most a Gaussian prior of 4 bins' standard deviation
TEMPO_BAND_MAX_PENALTY = 50.0  # logits: e^-50 is never sampled, yet a token of a segment's forced overlap
# keeps a positive float32 probability after the softmax (fairseq samples forced rows too; see FORCEABLE_LOGIT)
LEVEL_FIELDS = 4  # a level state row: windowed seconds, windowed quarters, total seconds, total quarters


def tempo_level_update(level: Tensor, period_s: Tensor, gap_q: Tensor, scale: Tensor,
                       tau_q: float = TEMPO_BAND_TAU_Q) -> Tensor:
    """:func:`tempo_level_update_reference`, in C++ operator for operator where ``museformer.native`` is
    loaded."""
    fast = native.loaded()
    if fast is not None and level.device.type == "cpu":
        return fast.tempo_level_update(level, period_s, gap_q, scale, float(tau_q))
    return tempo_level_update_reference(level, period_s, gap_q, scale, tau_q)


def tempo_level_update_reference(level: Tensor, period_s: Tensor, gap_q: Tensor, scale: Tensor,
                                 tau_q: float = TEMPO_BAND_TAU_Q) -> Tensor:
    """(B, 4) level state [windowed s, windowed quarters, total s, total quarters], (B,) beat period of
    the onset group just decoded (s per quarter), its notated gap from the previous group (quarters) and
    its notated-tempo scale (``QPM`` / 120) -> the state after it. Performed time counts as gap x period x
    scale (seconds at 120 quarters per minute notated), so a notated tempo change moves no level; the
    window decays by exp(-gap / tau_q). Rows whose gap is NaN or 0 (no group, the first group) are
    left as they are."""
    use = torch.isfinite(gap_q) & (gap_q > 0) & torch.isfinite(period_s)  # (B,)
    gap = torch.where(use, gap_q, torch.zeros_like(gap_q))  # (B,)
    secs = gap * torch.where(use, period_s * scale, torch.zeros_like(period_s))  # (B,)
    decay = torch.exp(-gap / tau_q)  # (B,)
    return torch.stack([level[:, 0] * decay + secs, level[:, 1] * decay + gap,
                        level[:, 2] + secs, level[:, 3] + gap], dim=1)  # (B, 4)


def band_reference(level: Tensor, ref: Optional[Tensor] = None) -> Tensor:
    """(B,) reference level of the tempo band, s per quarter relative to the notated tempo: ``ref`` when
    given, else the level so far (total s / total quarters of the (B, 4) level state)."""
    return level[:, 2] / level[:, 3].clamp(min=1e-9) if ref is None else ref


def tempo_band_excess(level: Tensor, band_bins: float, bin_log: float, ref: Optional[Tensor] = None) -> Tensor:
    """(B, 4) level state -> (B,) signed bins by which the windowed level (windowed s / windowed
    quarters) lies outside ``band_bins`` of the reference level: > 0 too slow, < 0 too fast, 0 inside
    the band. The reference is the level so far (total s / total quarters), or ``ref`` (B,) when given
    (s per quarter relative to the notated tempo: 0.5 is the notated tempo itself; NaN rows give NaN).
    ``bin_log``: the log of one tempo bin's period ratio."""
    window = level[:, 0] / level[:, 1].clamp(min=1e-9)  # (B,) s per quarter
    dev = torch.log(window.clamp(min=1e-9) / band_reference(level, ref).clamp(min=1e-9)) / bin_log  # (B,) bins
    return torch.sign(dev) * (dev.abs() - band_bins).clamp(min=0.0)


def tempo_band_penalty(logits: Tensor, period_s: Tensor, level: Tensor, gap_q: Tensor, scale: Tensor,
                       band_bins: float, bin_log: float, warmup_q: float = TEMPO_BAND_WARMUP_Q,
                       gain: float = TEMPO_BAND_GAIN, max_curve: float = TEMPO_BAND_MAX_CURVE,
                       ref: Optional[Tensor] = None) -> Tensor:
    """:func:`tempo_band_penalty_reference`, in C++ operator for operator where ``museformer.native`` is
    loaded."""
    fast = native.loaded()
    if fast is not None and logits.device.type == "cpu":
        return fast.tempo_band_penalty(logits, period_s, level, gap_q, scale, float(band_bins), float(bin_log),
                                       float(warmup_q), float(gain), float(max_curve), ref, TEMPO_BAND_MAX_PENALTY)
    return tempo_band_penalty_reference(logits, period_s, level, gap_q, scale, band_bins, bin_log, warmup_q, gain,
                                        max_curve, ref)


def tempo_band_penalty_reference(logits: Tensor, period_s: Tensor, level: Tensor, gap_q: Tensor, scale: Tensor,
                                 band_bins: float, bin_log: float, warmup_q: float = TEMPO_BAND_WARMUP_Q,
                                 gain: float = TEMPO_BAND_GAIN, max_curve: float = TEMPO_BAND_MAX_CURVE,
                                 ref: Optional[Tensor] = None) -> Tensor:
    """(B, 1, V) masked logits, (V,) beat period of each token (s per quarter; NaN: no Tempo token),
    (B, 4) level state (``tempo_level_update``), (B,) notated gap (quarters; NaN: no Tempo slot) and
    notated-tempo scale of this step -> logits pulled toward the reference level while the windowed
    level lies outside the band around it (the level so far, or ``ref`` where given; a NaN ``ref``
    leaves its row unchanged; see ``tempo_band_excess``): each Tempo token loses curve x d ** 2, d = its
    distance in bins from the reference (log period x scale / reference / ``bin_log``), curve = ``gain``
    x the excess in bins, at most ``max_curve``. A Gaussian prior centred on the reference, multiplied
    into the model's distribution: it narrows the choice around the reference and never rewards a
    token beyond it (a linear tilt would, and answered a slow passage with bursts of the fastest bins).
    The penalty is taken relative to the allowed token with the least (it keeps its logit) and capped at
    ``TEMPO_BAND_MAX_PENALTY``. Rows before ``warmup_q`` quarters, at no Tempo slot, at a group with gap
    0, or inside the band are unchanged. Example: reference 0.5 s per quarter, window 0.8 s (16.2 bins
    slower), band 12: excess 4.2, curve 0.0085; a token 10 bins from the reference loses 0.85 logits,
    one 20 bins away 3.4."""
    use = torch.isfinite(gap_q) & (gap_q > 0) & (level[:, 3] >= warmup_q)  # (B,)
    curve = (gain * tempo_band_excess(level, band_bins, bin_log, ref).abs()).clamp(max=max_curve)  # (B,)
    curve = torch.where(use & torch.isfinite(curve), curve, torch.zeros_like(curve))  # (B,); NaN ref: none
    if not bool((curve != 0).any()):
        return logits
    reference = band_reference(level, ref)  # (B,) s per quarter
    dist = torch.log(period_s.unsqueeze(0) * scale.unsqueeze(1) / reference.unsqueeze(1)) / bin_log  # (B, V) bins
    return apply_prior(logits, curve.unsqueeze(1) * dist.square())  # (B, V) penalty; NaN: no Tempo token


def apply_prior(logits: Tensor, penalty: Tensor) -> Tensor:
    """(B, 1, V) masked logits, (B, V) penalty per token (NaN: none) -> logits minus the penalty taken
    relative to the allowed token with the least (it keeps its logit), capped at
    ``TEMPO_BAND_MAX_PENALTY``: the bands' Gaussian priors."""
    candidate = torch.isfinite(logits[:, 0]) & torch.isfinite(penalty)  # (B, V)
    least = penalty.masked_fill(~candidate, float("inf")).amin(-1, keepdim=True)  # (B, 1)
    penalty = (penalty - least.clamp(max=1e30)).nan_to_num(0.0, posinf=0.0, neginf=0.0)  # (B, V)
    penalty = penalty.masked_fill(~candidate, 0.0).clamp(min=0.0, max=TEMPO_BAND_MAX_PENALTY)  # (B, V)
    return logits - penalty.unsqueeze(1).to(logits.dtype)  # (B, 1, V); -inf stays -inf


# The fermata hold (--fermata-hold BINS): a fermata's onset group and the one after it are played slower.
FERMATA_MIN_WINDOW_Q = 1.0  # quarters in the tempo window below which the latest beat period is the reference


def fermata_reference_bin(level: Tensor, period_s: Tensor, scale: Tensor, first_period_s: Union[float, Tensor],
                          bin_log: float) -> Tensor:
    """(B, 4) level state (``tempo_level_update``), (B,) beat period of the latest ``Tempo`` token (s per
    quarter; NaN: none yet), (B,) notated-tempo scale of this step -> (B,) fractional tempo bin of the
    reference that the fermata hold lifts: the 8-quarter windowed level converted to this step's notated
    tempo, or the latest beat period while the window holds under ``FERMATA_MIN_WINDOW_Q`` quarters (a
    fermata in the opening bars). ``first_period_s``: bin 0's period (a float, or (B,) where it depends
    on the row: the relative encoding's level and notated tempo); ``bin_log``: log period ratio of one bin.
    NaN where neither exists."""
    window = level[:, 0] / level[:, 1].clamp(min=1e-9) / scale  # (B,) s per quarter at this step's QPM
    ref = torch.where(level[:, 1] >= FERMATA_MIN_WINDOW_Q, window, period_s)  # (B,)
    return torch.log(ref / first_period_s) / bin_log


def fermata_hold(logits: Tensor, tempo_ids: Tensor, ref_bin: Tensor, lift_bins: float, active: Tensor) -> Tensor:
    """(B, 1, V) masked logits, (N,) dictionary ids of the ``Tempo`` tokens in bin order, (B,) reference
    bin (fractional; NaN: no reference), lift (bins), (B,) rows at a fermata slot -> logits whose ``Tempo``
    distribution is moved k whole bins slower, k the least that brings its expected bin to ref_bin +
    lift_bins or beyond (rows already there, inactive or without a reference are unchanged). The shape of
    the model's distribution is kept (a sample keeps its spread; ``Tempo=mean`` then picks the lifted
    mean): bin b takes the logit of bin b - k, the top bin gathers the mass of every bin shifted past it
    (log-sum-exp), and bins below k that were allowed get ``FORCEABLE_LOGIT`` (still forceable as a
    segment's overlap). Example: expected bin 60.4, reference 58.0, lift 15: k = ceil(73.0 - 60.4) = 13,
    the old bin 60 becomes bin 73."""
    if not bool(active.any()):
        return logits
    n = tempo_ids.numel()
    old = logits[:, 0, tempo_ids].float()  # (B, N)
    bins = torch.arange(n, device=logits.device, dtype=torch.float)  # (N,)
    p = torch.softmax(old, dim=-1).nan_to_num(0.0)  # (B, N); a row with no Tempo token is all NaN -> 0
    expected = (p * bins).sum(-1)  # (B,)
    k = torch.ceil(ref_bin + lift_bins - expected - 1e-6)  # (B,)
    use = active & torch.isfinite(k) & (k > 0) & torch.isfinite(old).any(-1)  # (B,)
    if not bool(use.any()):
        return logits
    k = torch.where(use, k, torch.zeros_like(k)).clamp(max=n - 1).long()  # (B,)
    src = bins.long().unsqueeze(0) - k.unsqueeze(1)  # (B, N) source bin of each bin
    shifted = old.gather(1, src.clamp(min=0))  # (B, N)
    tail = torch.logcumsumexp(old.flip(-1), dim=-1).flip(-1)  # (B, N): log-sum-exp of bins j..N-1
    shifted[:, -1] = tail.gather(1, src[:, -1:].clamp(min=0)).squeeze(1)  # the top bin gathers the rest
    below = src < 0  # (B, N)
    shifted = torch.where(below, old.masked_fill(torch.isfinite(old), FORCEABLE_LOGIT), shifted)  # (B, N)
    new = torch.where(use.unsqueeze(1), shifted, old)  # (B, N)
    out = logits.clone()
    out[:, 0, tempo_ids] = new.to(logits.dtype)
    return out


# The dynamics band (--dynamics-band BINS): keeps the windowed velocity level near the notated dynamics.
DYN_BAND_TAU_NOTES = 32.0  # notes: time constant of the windowed (exponentially weighted) offset from the notated level
DYN_BAND_WARMUP_NOTES = 32.0  # notes decoded before the band applies (the opening sets the rendering's own offset)
DYN_BAND_GAIN = 0.03  # prior curvature (logit per squared velocity bin) per bin that the window lies outside
DYN_BAND_MAX_CURVE = 1.0 / (2 * 3.0 ** 2)  # at most a Gaussian prior of 3 bins' (6 MIDI velocities') deviation
DYN_FIELDS = 4  # a dynamics state row: windowed offset sum, windowed weight, total offset sum, total notes


def dynamics_level_update(dyn: Tensor, value: Tensor, ref: Tensor, tau: float = DYN_BAND_TAU_NOTES) -> Tensor:
    """(B, 4) dynamics state [windowed offset sum, windowed weight, total offset sum, total notes], (B,)
    velocity bin of the note just decoded (NaN: none, e.g. a deleted note or no ``Vel`` slot) and its
    notated level (fractional bin, ``dynamics_slot_refs``; NaN: none) -> the state after it. The offset is
    bin - level; the window decays by exp(-1 / tau) per note. Rows where either is NaN are unchanged."""
    use = torch.isfinite(value) & torch.isfinite(ref)  # (B,)
    off = torch.where(use, value - ref, torch.zeros_like(value))  # (B,) bins
    decay = torch.where(use, torch.full_like(value, math.exp(-1.0 / tau)), torch.ones_like(value))  # (B,)
    one = use.to(value.dtype)  # (B,)
    return torch.stack([dyn[:, 0] * decay + off, dyn[:, 1] * decay + one,
                        dyn[:, 2] + off, dyn[:, 3] + one], dim=1)  # (B, 4)


def dynamics_band_excess(dyn: Tensor, band_bins: float) -> Tensor:
    """(B, 4) dynamics state -> (B,) signed velocity bins by which the windowed offset from the notated
    level lies outside ``band_bins`` of the rendering's offset so far: > 0 too loud for the notated
    dynamics, < 0 too soft, 0 inside the band."""
    window = dyn[:, 0] / dyn[:, 1].clamp(min=1e-9)  # (B,) bins
    so_far = dyn[:, 2] / dyn[:, 3].clamp(min=1e-9)  # (B,) bins
    dev = window - so_far  # (B,)
    return torch.sign(dev) * (dev.abs() - band_bins).clamp(min=0.0)


def dynamics_band_penalty(logits: Tensor, value: Tensor, dyn: Tensor, ref: Tensor, band_bins: float,
                          warmup_notes: float = DYN_BAND_WARMUP_NOTES, gain: float = DYN_BAND_GAIN,
                          max_curve: float = DYN_BAND_MAX_CURVE) -> Tensor:
    """(B, 1, V) masked logits, (V,) token numbers (velocity bins at ``Vel`` tokens), (B, 4) dynamics
    state (``dynamics_level_update``), (B,) notated level of this step's note (fractional bin; NaN: no
    ``Vel`` slot or no dynamics marked) -> logits pulled toward the notated level plus the rendering's
    offset so far while the windowed offset lies outside the band (``dynamics_band_excess``): each
    allowed numbered token loses curve x d ** 2, d = its distance in bins from that target, curve =
    ``gain`` x the excess, at most ``max_curve``; relative to the allowed token with the least, capped at
    ``TEMPO_BAND_MAX_PENALTY``. A Gaussian prior multiplied into the model's distribution, as the tempo
    band's: inside the band the model's dynamics are its own, so its phrasing and voicing stay; past it,
    it follows the notated dynamic changes (a *p* after a *f* section) instead of drifting. Rows before
    ``warmup_notes`` notes, without a level or inside the band are unchanged. Example: level 24 bins (p),
    offset so far +6, window +11.5 (too loud), band 4: excess 1.5, curve 0.045; target 30: bin 40 loses
    4.5 logits, bin 32 0.18."""
    use = torch.isfinite(ref) & (dyn[:, 3] >= warmup_notes)  # (B,)
    curve = (gain * dynamics_band_excess(dyn, band_bins).abs()).clamp(max=max_curve)  # (B,)
    curve = torch.where(use & torch.isfinite(curve), curve, torch.zeros_like(curve))  # (B,)
    if not bool((curve != 0).any()):
        return logits
    target = ref + dyn[:, 2] / dyn[:, 3].clamp(min=1e-9)  # (B,) bins
    return apply_prior(logits, curve.unsqueeze(1) * (value.unsqueeze(0) - target.nan_to_num(0.0).unsqueeze(1)).square())

