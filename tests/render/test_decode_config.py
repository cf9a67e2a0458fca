"""DecodeConfig declares every decoding flag once: the render and task profiles get the same flags
with their own defaults, and the namespace reads back into the same config."""
import argparse
import dataclasses

import pytest

from museformer.decoding import DecodeConfig
from museformer.decoding.config import DYNAMICS_BAND_BINS, FERMATA_HOLD_BINS, MIN_KEY_DOWN_MS, TEMPO_BAND_BINS


def parse(profile, argv=()):
    p = argparse.ArgumentParser()
    DecodeConfig.add_args(p, profile)
    return DecodeConfig.from_args(p.parse_args(list(argv)), profile)


def test_render_profile_defaults_are_the_measured_ones():
    c = parse("render")
    assert c == DecodeConfig()
    assert (c.min_key_down_ms, c.tempo_band, c.fermata_hold, c.dynamics_band) == (
        MIN_KEY_DOWN_MS, TEMPO_BAND_BINS, FERMATA_HOLD_BINS, DYNAMICS_BAND_BINS)
    assert c.no_deletions and c.unisons_once and c.constrained


def test_task_profile_has_every_rule_off():
    c = parse("task")
    assert c == DecodeConfig.defaults("task")
    assert (c.min_key_down_ms, c.tempo_band, c.fermata_hold, c.dynamics_band) == (0, 0, 0, 0)
    assert not c.no_deletions and not c.unisons_once and c.constrained


def test_flags_turn_rules_on_and_off_in_each_profile():
    r = parse("render", ["--keep-unisons", "--allow-deletions", "--tempo-band", "0", "--tempo-anchor", "self"])
    assert (r.unisons_once, r.no_deletions, r.tempo_band, r.tempo_anchor) == (False, False, 0.0, "self")
    t = parse("task", ["--unisons-once", "--no-deletions", "--unconstrained", "--type-temperature", "Vel=mean"])
    assert (t.unisons_once, t.no_deletions, t.constrained, t.type_temperature) == (True, True, False, "Vel=mean")


def test_every_field_has_a_flag_and_help():
    for f in dataclasses.fields(DecodeConfig):
        assert f.metadata["flag"].startswith("--") and len(f.metadata["help"]) > 20, f.name


@pytest.mark.parametrize("name", ["min_key_down_ms", "tempo_band", "fermata_hold", "dynamics_band"])
def test_negative_setting_names_its_flag(name):
    with pytest.raises(ValueError, match="--" + name.replace("_", "-")):
        DecodeConfig().replace(**{name: -1.0}).check()


def test_a_checkpoint_namespace_without_a_field_keeps_the_default():
    assert DecodeConfig.from_args(argparse.Namespace(tempo_band=3.0)).fermata_hold == FERMATA_HOLD_BINS
