"""MIDI -> audio with FluidSynth and a General MIDI soundfont from the system packages.

FluidSynth renders offline (``-F``: no audio device, no network) to Ogg Vorbis, which every browser
plays (a 3-minute piece is about 3 MB). Where FluidSynth or a soundfont is missing, :attr:`Synth.missing`
says what to install and the page still offers the MIDI.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

# Debian's General MIDI soundfonts, best piano first: fluid-soundfont-gm (FluidR3, 142 MB installed),
# timgm6mb-soundfont (TimGM6mb, 6 MB), then whichever the system's default-GM alternative points at.
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf3/MuseScore_General.sf3",
              "/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf2/default-GM.sf2",
              "/usr/share/sounds/sf3/default-GM.sf3")
INSTALL_HINT = "sudo apt-get install fluidsynth fluid-soundfont-gm (or the 6 MB timgm6mb-soundfont)"
GAIN = 0.5  # FluidSynth's master gain: its default 0.2 is quiet; 0.5 leaves headroom for full chords
SAMPLE_RATE = 44100
SYNTH_TIMEOUT_S = 300


class SynthError(Exception):
    """FluidSynth failed or is missing; the message is one line."""


@dataclass
class Synth:
    """The FluidSynth binary and the soundfont it plays with (None: not found)."""

    fluidsynth: Optional[str]
    soundfont: Optional[str]

    @classmethod
    def find(cls, fluidsynth: Optional[str] = None, soundfont: Optional[str] = None,
             candidates: Sequence[str] = SOUNDFONTS) -> "Synth":
        """The given paths, else ``$INSTRUCT_SOUNDFONT`` and the first of ``candidates`` that exists, and
        ``fluidsynth`` on the PATH."""
        binary = fluidsynth if fluidsynth is not None else shutil.which("fluidsynth")
        if binary is not None and not (Path(binary).is_file() and os.access(binary, os.X_OK)):
            binary = None
        fonts = [soundfont] if soundfont is not None else [os.environ.get("INSTRUCT_SOUNDFONT", ""), *candidates]
        font = next((f for f in fonts if f and Path(f).is_file()), None)
        return cls(binary, font)

    @property
    def missing(self) -> Optional[str]:
        """None when audio works, else one line: what is missing and what to install."""
        if self.fluidsynth is None and self.soundfont is None:
            what = "FluidSynth and a General MIDI soundfont"
        elif self.fluidsynth is None:
            what = "FluidSynth"
        elif self.soundfont is None:
            what = "a General MIDI soundfont (or set INSTRUCT_SOUNDFONT to a .sf2 file)"
        else:
            return None
        return f"no audio: {what} not found; install with: {INSTALL_HINT}. The MIDI downloads still work."

    def render(self, midi_path: Path, out_path: Path) -> Path:
        """Synthesise ``midi_path`` to Ogg Vorbis at ``out_path`` (written whole or not at all)."""
        if self.missing:
            raise SynthError(self.missing)
        part = out_path.with_name(out_path.name + ".part")
        cmd = [self.fluidsynth, "-ni", "-q", "-g", str(GAIN), "-r", str(SAMPLE_RATE), "-T", "oga",
               "-F", str(part), self.soundfont, str(midi_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SYNTH_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            part.unlink(missing_ok=True)
            raise SynthError(f"FluidSynth took longer than {SYNTH_TIMEOUT_S} s") from None
        if proc.returncode != 0 or not part.is_file() or part.stat().st_size == 0:
            part.unlink(missing_ok=True)
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise SynthError(f"FluidSynth failed (exit {proc.returncode}): {detail[-1] if detail else 'no output'}")
        os.replace(part, out_path)
        return out_path
