"""Roundtrip fidelity cases found on (n)ASAP: mixed meters, alignment outliers, runs of deletions."""
import numpy as np

from instruct_tokenizer.match import MatchFile, parse_lines
from instruct_tokenizer.roundtrip import roundtrip_errors, sound_end_s

HEADER_V1 = ["info(matchFileVersion,1.0.0).", "info(midiClockUnits,480).", "info(midiClockRate,500000).",
             "scoreprop(timeSignature,4/4,1:1,0,0.0000).", "scoreprop(timeSignature,3/2,3:1,0,8.0000)."]
HEADER_V5 = ["info(matchFileVersion,5.0).", "info(midiClockUnits,480).", "info(midiClockRate,500000).",
             "info(timeSignature,[4/4]).", "meta(timeSignature,4/4,1,0.0).", "meta(timeSignature,3/2,3,8.0)."]


def _snote(i, measure, beat, onset_beats, v5=False):
    tick = 480 * (i + 1)
    perf = (f"note(n{i},[C,n],4,{tick},{tick + 240},{tick + 240},64)" if v5
            else f"note(n{i},60,{tick},{tick + 240},64,0,0)")
    return f"snote(s{i},[C,n],4,{measure}:{beat},0,1/4,{onset_beats},{onset_beats + 1},[staff1])-{perf}."


def test_onset_in_beats_accumulates_per_meter():
    """OnsetInBeats counts beats of the meter in force: after 4/4 -> 3/2 they are halves, so a note in
    the second 3/2 bar (8 quarters + 3 halves) is at quarter 14, not 11 x 4 / 2 = 22."""
    for header, v5 in ((HEADER_V1, False), (HEADER_V5, True)):
        lines = header + [_snote(0, 1, 1, 0.0, v5), _snote(1, 2, 1, 4.0, v5), _snote(2, 3, 1, 8.0, v5),
                          _snote(3, 4, 1, 11.0, v5), _snote(4, 4, 2, 12.0, v5)]
        mf = parse_lines(lines)
        assert np.allclose(mf.onset_q, [0, 4, 8, 14, 16]), mf.onset_q
        assert np.allclose(mf.pos_q, [0, 0, 0, 0, 2])


def _steady(n_groups=240, period=0.4):
    onset_q = np.arange(n_groups) * 0.5
    onset_s = 1.0 + onset_q * period + np.random.default_rng(0).normal(0, 0.005, n_groups)
    n = n_groups
    return dict(
        path="<test>", version="1.0.0", info={}, time_sigs=[(1, 4, 4)], anchor=[f"n{i}" for i in range(n)],
        measure=(onset_q // 4).astype(np.int64) + 1, repeat_pass=np.ones(n, np.int64), pos_q=onset_q % 4,
        onset_q=onset_q, dur_q=np.full(n, 0.5), grace=np.zeros(n, bool), pitch=np.full(n, 60),
        staff=np.ones(n, np.int64), played=np.ones(n, bool), onset_s=onset_s, offset_s=onset_s + 0.15,
        velocity=np.full(n, 64), perf_pitch=np.full(n, 60))


def test_out_of_order_outlier_does_not_derail_the_grid():
    """One note aligned 15 s late (alignment garbage): only that note is off, the grid stays on the rest."""
    kw = _steady()
    kw["onset_s"] = kw["onset_s"].copy()
    kw["onset_s"][100] += 15.0
    kw["offset_s"] = kw["onset_s"] + 0.15
    err = roundtrip_errors(MatchFile(**kw))
    assert err["onset_p99_ms"] <= 20.0
    assert err["onset_end_ms"] <= err["onset_start_ms"] + 2.0


def test_run_of_deleted_groups_is_interpolated():
    """A slow group, then many deleted groups: the grid crosses them at the surrounding tempo instead
    of carrying the last (slow) period forward and overshooting the next played note."""
    kw = _steady()
    kw["onset_s"] = kw["onset_s"].copy()
    kw["onset_s"][51:] += 3.0  # a long pause before group 51
    kw["played"] = kw["played"].copy()
    kw["played"][52:70] = False
    kw["onset_s"][52:70] = np.nan
    kw["offset_s"] = kw["onset_s"] + 0.15
    kw["velocity"] = np.where(kw["played"], 64, 0)
    err = roundtrip_errors(MatchFile(**kw))
    assert err["onset_p99_ms"] <= 20.0


def test_chord_note_aligned_seconds_away_is_an_outlier():
    """A chord note aligned 8 s away neither pulls its chord's grid nor decodes 2 s off: it is counted as
    an alignment outlier and encoded as not played."""
    kw = _steady()
    extra = {k: (np.concatenate([v, v[100:101]]) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    extra["anchor"] = kw["anchor"] + ["n_extra"]
    extra["pitch"] = extra["pitch"].copy()
    extra["pitch"][-1] = 64
    extra["onset_s"] = extra["onset_s"].copy()
    extra["onset_s"][-1] += 8.0
    extra["offset_s"] = extra["onset_s"] + 0.15
    err = roundtrip_errors(MatchFile(**extra))
    assert err["outliers"] == 1
    assert err["onset_p99_ms"] <= 3.0


def test_pedal_change_before_the_first_note():
    """Pedal offsets are >= 0 after their onset's grid: the first grid starts early enough to carry a
    pedal pressed 1 s before the first note."""
    kw = _steady()
    kw["sustain"] = [(kw["onset_s"][0] - 1.0, 127), (kw["onset_s"][10], 0)]
    kw["soft"] = [(kw["onset_s"][0] - 0.6, 127), (kw["onset_s"][20] + 0.05, 0)]
    err = roundtrip_errors(MatchFile(**kw))
    assert err["pedal_within_20ms"] == 1.0 and err["soft_within_20ms"] == 1.0
    assert err["onset_p99_ms"] <= 20.0 and err["onset_median_ms"] <= 3.0


def test_pedal_change_seconds_before_the_first_note():
    """A pedal pressed 3 s before the first note (farther than the first grid may start early) goes to
    the first group with a negative offset."""
    kw = _steady()
    kw["sustain"] = [(kw["onset_s"][0] - 1.2 - 1.9, 127), (kw["onset_s"][10], 0)]
    err = roundtrip_errors(MatchFile(**kw))
    assert err["pedal_within_20ms"] == 1.0 and err["onset_p99_ms"] <= 20.0


def test_pedal_flutter_beyond_the_slots_goes_to_later_groups():
    """Ten sustain toggles inside one 0.2 s gap, and two soft toggles: more changes than the group (3
    sustain, 1 soft slot) and every earlier group can hold; the rest go to later groups (negative
    offsets), and every change decodes within 20 ms."""
    kw = _steady(n_groups=40)
    t0 = kw["onset_s"][0] + 0.01
    kw["sustain"] = [(t0 + 0.02 * k, 127 if k % 2 == 0 else 0) for k in range(10)]
    kw["soft"] = [(t0 + 0.05, 127), (t0 + 0.12, 0)]
    err = roundtrip_errors(MatchFile(**kw))
    assert err["pedal_changes"] == 10 and err["pedal_within_20ms"] == 1.0
    assert err["soft_changes"] == 2 and err["soft_within_20ms"] == 1.0


def test_pedal_released_long_after_the_last_note():
    """A release 8 s after the last note's onset (beyond the first releases' 6 s pedal range)."""
    kw = _steady()
    kw["sustain"] = [(kw["onset_s"][-5], 127), (kw["onset_s"][-1] + 8.0, 0)]
    err = roundtrip_errors(MatchFile(**kw))
    assert err["pedal_within_20ms"] == 1.0


def test_fermata_chord_spread_far_from_its_grid():
    """A final chord held in a 6 s fermata whose notes are rolled over 3.6 s: within the 2 s outlier
    bound of the chord's reference onset, but farther than 2 s from the decoded grid. Time reaches 4 s,
    so every note keeps its onset and the end of the piece is as exact as its start."""
    kw = _steady(n_groups=60)
    extra = {k: (np.concatenate([v, np.repeat(v[-1:], 4)]) if isinstance(v, np.ndarray) else v)
             for k, v in kw.items()}
    extra["anchor"] = kw["anchor"] + [f"roll{k}" for k in range(4)]
    extra["pitch"] = extra["pitch"].copy()
    extra["pitch"][-5:] = [48, 55, 60, 64, 67]
    extra["onset_s"] = extra["onset_s"].copy()
    extra["onset_s"][-5:] = extra["onset_s"][-6] + 6.0 + np.array([-1.8, -0.9, 0.0, 0.9, 1.8])
    extra["offset_s"] = extra["onset_s"] + 0.15
    err = roundtrip_errors(MatchFile(**extra))
    assert err["outliers"] == 0
    assert err["onset_p99_ms"] <= 20.0


def test_pedal_pressed_seconds_before_the_first_note_keeps_its_time():
    """A soft and a sustain pedal pressed 12 and 9 s before the first note (a performer settling in):
    the first grid starts early and the wide negative pedal bins (to -14 s) hold the rest."""
    kw = _steady()
    kw["sustain"] = [(kw["onset_s"][0] - 9.0, 127), (kw["onset_s"][10], 0)]
    kw["soft"] = [(kw["onset_s"][0] - 12.0, 127), (kw["onset_s"][30] + 0.05, 0)]
    err = roundtrip_errors(MatchFile(**kw))
    assert err["pedal_within_20ms"] == 1.0 and err["soft_within_20ms"] == 1.0
    assert err["onset_p99_ms"] <= 3.0


def test_pedal_held_through_a_long_final_chord():
    """The last chord held 15 s with the pedal down, released 17 s after its onset: an audible change
    (the sound ends there) that the pedal bins to 20 s after a grid time hold."""
    kw = _steady()
    kw["offset_s"] = kw["offset_s"].copy()
    kw["offset_s"][-1] = kw["onset_s"][-1] + 15.0
    kw["sustain"] = [(kw["onset_s"][-3], 127), (kw["onset_s"][-1] + 17.0, 0)]
    mf = MatchFile(**kw)
    assert sound_end_s(mf) == kw["onset_s"][-1] + 17.0
    err = roundtrip_errors(mf)
    assert err["pedal_changes"] == 2 and err["pedal_silent_changes"] == 0
    assert err["pedal_within_20ms"] == 1.0


def test_pedal_changes_after_the_piano_falls_silent_are_reported_apart():
    """A recording that runs on: the pedal is released 1 s after the last key release (the sound ends),
    then toggled 40 times a minute later. Those are silent: reported as such, outside the audible share."""
    kw = _steady()
    last_release = kw["offset_s"][-1]
    tail = [(last_release + 60.0 + 0.5 * k, 127 if k % 2 == 0 else 0) for k in range(40)]
    kw["sustain"] = [(kw["onset_s"][-4], 127), (last_release + 1.0, 0)] + tail
    mf = MatchFile(**kw)
    assert abs(sound_end_s(mf) - (last_release + 1.0)) < 1e-9
    err = roundtrip_errors(mf)
    assert err["pedal_changes"] == 2 and err["pedal_within_20ms"] == 1.0
    assert err["pedal_silent_changes"] == 40 and err["pedal_silent_within_20ms"] < 1.0


def test_sound_ends_at_the_last_release_when_the_pedal_is_up():
    kw = _steady()
    kw["sustain"] = [(kw["onset_s"][5], 127), (kw["onset_s"][9], 0), (kw["offset_s"][-1] + 30.0, 127)]
    assert sound_end_s(MatchFile(**kw)) == float(np.max(kw["offset_s"]))


def test_far_notes_quantise_within_five_ms():
    """Every Time deviation within +-4 s quantises to 5 ms or better (1 ms within +-40 ms), so notes far
    from their grid (arpeggios, a grid at the tempo limit) keep the end of a piece as exact as its start."""
    from instruct_tokenizer import vocab as V

    dev_s = np.linspace(-4.0, 4.0, 160001)
    decoded_ms = np.array([V.parse(t)[1] for t in V.time_tokens(dev_s)], dtype=np.float64)
    err_ms = np.abs(decoded_ms - dev_s * 1000.0)
    assert err_ms.max() <= 5.0 + 1e-6
    assert err_ms[np.abs(dev_s) <= 0.040].max() <= 0.5 + 1e-6
