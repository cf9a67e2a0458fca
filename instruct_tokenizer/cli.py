"""``instruct-tokenize``: build a corpus, tokenize a score, decode tokens to MIDI."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .build import BuildConfig, EmptySplitError, build


def _floats(text: str) -> tuple:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _transpose_range(text: str) -> tuple:
    """``-3,3`` -> every shift from -3 to 3 except 0."""
    lo, hi = _ints(text)
    return tuple(k for k in range(lo, hi + 1) if k != 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="instruct-tokenize", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="match files -> {split}.score/.perf, dict.txt, manifest.jsonl")
    b.add_argument("src", nargs="+", help="match files or directories (searched recursively)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--split", type=_floats, default=(0.8, 0.1, 0.1), help="train,valid,test shares of pieces")
    b.add_argument("--seed", type=int, default=0, help="split seed")
    b.add_argument("--max-tokens", type=int, default=1024, help="max tokens per example (score or perf)")
    b.add_argument("--overlap-bars", type=int, default=2, help="bars shared by consecutive segments")
    b.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    b.add_argument("--test-pieces", default=None, help="CSV with composer,title columns pinned to test")
    b.add_argument("--instruct", dest="instruct", action="store_true", default=True,
                   help="add instruct prefix tokens (default)")
    b.add_argument("--no-instruct", dest="instruct", action="store_false", help="no instruct prefix")
    b.add_argument("--meta", default="", help="meta tokens to add: composer,performer")
    b.add_argument("--augment-transpose", type=_transpose_range, default=(),
                   help="train-set transpositions LO,HI in semitones, e.g. -3,3")
    b.add_argument("--augment-tempo", type=_floats, default=(), help="train-set tempo scales, e.g. 0.9,1.1")
    b.add_argument("--xml-markings", action="store_true",
                   help="add MusicXML markings (dynamics, wedges, tempo words, articulations, slurs) to the "
                        "score stream; the XML is found beside the match file (cached, see --cache-dir)")
    b.add_argument("--markings-dropout", type=float, default=0.0,
                   help="with --xml-markings: share of performances built without markings (seeded by file), "
                        "so that the model also learns to render score MIDI, which has none")
    b.add_argument("--dropout-view", choices=("markings-dropped", "score-midi"), default="markings-dropped",
                   help="with --markings-dropout: what such a performance's score is: its notated lengths without "
                        "the markings (markings-dropped, default) or as a notation program's score MIDI writes it "
                        "(score-midi: staccato notes a half, staccatissimo a third of their length, then the "
                        "markings dropped; each Art over the written length)")
    b.add_argument("--notated-tempo", action="store_true",
                   help="a QPM token (the score's notated tempo, from the MusicXML beside the match file; 120 "
                        "when it states none) in every bar header")
    b.add_argument("--relative-tempo", action="store_true",
                   help="with --notated-tempo: tempo relative to the score's notated tempo, a TempoLevel token "
                        "(the performance's level over the notated tempo, the same in every segment) before each "
                        "segment's bars and a TempoRel token (beat period over notated x level) per onset instead "
                        "of the absolute Tempo (docs/tokens.md, Relative tempo)")
    b.add_argument("--infer-tempo", action="store_true",
                   help="with --notated-tempo: a score without a metronome mark gets the notated tempo that "
                        "instruct-render would infer (tempo words, meter, content: tempo_infer) instead of 120, "
                        "so that training sees what rendering gives the model")
    b.add_argument("--beat-grid", action="store_true",
                   help="one tempo per quarter-note beat: the onset groups between two beats (at most 2 quarters "
                        "apart) repeat the beat's tempo token and carry their own timing in Time, as VirtuosoNet's "
                        "beat tempo and onset deviation (docs/tokens.md, Beat grid)")
    b.add_argument("--marking-state", action="store_true",
                   help="with --xml-markings: the markings in force at each bar start (dynamic level, open "
                        "wedge, open rit./accel.) in every bar header (docs/tokens.md)")
    b.add_argument("--cache-dir", default=None, help="parsed MusicXML cache (default ~/.cache/instruct_tokenizer)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("score", help="a score (MusicXML or score MIDI) -> score tokens")
    s.add_argument("score", help="MusicXML or MIDI file")
    s.add_argument("-o", "--output", default=None, help="output token file (default: stdout)")
    s.add_argument("--style", default=None, help="instruct levels, e.g. tempo=fast,dynamics=loud")
    s.add_argument("--no-repeats", action="store_true", help="play each repeated section once")
    s.add_argument("--markings", action="store_true", help="add MusicXML markings (for --xml-markings corpora)")
    s.add_argument("--no-instruct", action="store_true", help="no instruct prefix (for --no-instruct corpora)")
    s.add_argument("--notated-tempo", action="store_true", help="QPM bar tokens (for --notated-tempo corpora)")
    s.add_argument("--marking-state", action="store_true",
                   help="with --markings: marking-state bar tokens (for --marking-state corpora)")

    d = sub.add_parser("decode", help="score + performance tokens -> performance MIDI")
    d.add_argument("--score-tokens", required=True, help="file with score tokens (first line used)")
    d.add_argument("--perf-tokens", required=True, help="file with performance tokens (first line used)")
    d.add_argument("-o", "--output", required=True, help="output MIDI path")
    return p


def _first_line(path: str) -> List[str]:
    with open(path) as f:
        return f.readline().split()


def cmd_build(a: argparse.Namespace) -> int:
    cfg = BuildConfig(split=a.split, seed=a.seed, max_tokens=a.max_tokens, overlap_bars=a.overlap_bars,
                      workers=a.workers, test_pieces=a.test_pieces, instruct=a.instruct,
                      meta=tuple(m for m in a.meta.split(",") if m), transpose=a.augment_transpose,
                      tempo_scale=a.augment_tempo, progress=not a.no_progress, xml_markings=a.xml_markings,
                      cache_dir=a.cache_dir, markings_dropout=a.markings_dropout, dropout_view=a.dropout_view,
                      notated_tempo=a.notated_tempo, marking_state=a.marking_state,
                      relative_tempo=a.relative_tempo, infer_tempo=a.infer_tempo, beat_grid=a.beat_grid)
    if cfg.dropout_view != "markings-dropped" and not (cfg.markings_dropout > 0 and cfg.xml_markings):
        print("instruct-tokenize: error: --dropout-view needs --markings-dropout above 0 and --xml-markings",
              file=sys.stderr)
        return 2
    if cfg.infer_tempo and not cfg.notated_tempo:
        print("instruct-tokenize: error: --infer-tempo needs --notated-tempo", file=sys.stderr)
        return 2
    if cfg.marking_state and not cfg.xml_markings:
        print("instruct-tokenize: error: --marking-state needs --xml-markings", file=sys.stderr)
        return 2
    if cfg.relative_tempo and not cfg.notated_tempo:
        print("instruct-tokenize: error: --relative-tempo needs --notated-tempo (the QPM it is relative to)",
              file=sys.stderr)
        return 2
    try:
        report = build(a.src, a.out, cfg)
    except EmptySplitError as e:
        print(f"instruct-tokenize: error: {a.out}: {e}", file=sys.stderr)
        return 1
    total = sum(report.built.values())
    print(f"built {total} performances ({report.built}), skipped {len(report.skipped)}, "
          f"insertions dropped {report.insertions}, deletions {report.deletions} -> {a.out}")
    return 0 if total else 1


def _key_value(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--style wants key=level pairs, got {text!r}")
    return key.strip(), value.strip()


def cmd_score(a: argparse.Namespace) -> int:
    from .encode import score_file_to_tokens
    from .scorefile import ScoreReadError

    try:
        style = dict(_key_value(kv) for kv in a.style.split(",")) if a.style else {}
        tokens = score_file_to_tokens(a.score, style=style, unfold_repeats=not a.no_repeats,
                                      markings=a.markings, instruct=not a.no_instruct,
                                      notated_tempo=a.notated_tempo, marking_state=a.marking_state)
    except (ScoreReadError, ValueError) as e:
        print(f"instruct-tokenize: error: {a.score}: {e}", file=sys.stderr)
        return 1
    text = " ".join(tokens) + "\n"
    if a.output:
        Path(a.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_decode(a: argparse.Namespace) -> int:
    from .decode import DecodeError, tokens_to_midi

    try:
        tokens_to_midi(_first_line(a.score_tokens), _first_line(a.perf_tokens), a.output)
    except (DecodeError, ValueError, OSError) as e:
        print(f"instruct-tokenize: error: {a.perf_tokens}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.output}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    return {"build": cmd_build, "score": cmd_score, "decode": cmd_decode}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
