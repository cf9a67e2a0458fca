#!/usr/bin/env python
"""Tokenizer throughput: aligned notes/s of our match-only path vs partitura.load_match, same files,
same run (one core each), plus MusicXML parse time reported separately.

    python scripts/bench_tokenize.py [--files 40]
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from instruct_tokenizer.encode import encode_match  # noqa: E402
from instruct_tokenizer.match import load_match  # noqa: E402

NASAP = REPO.parent / "shared" / "datasets" / "nasap"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=40, help="number of (n)ASAP match files (every k-th)")
    a = ap.parse_args()
    all_files = sorted(NASAP.rglob("*.match"))
    files = all_files[:: max(1, len(all_files) // a.files)][: a.files]
    t = time.perf_counter()
    notes = 0
    for f in files:
        notes += load_match(str(f)).n_played
    t_parse = time.perf_counter() - t
    t = time.perf_counter()
    for f in files:
        encode_match(load_match(str(f)))
    t_ours = time.perf_counter() - t
    import partitura as pt

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            pt.load_match(str(f))
    t_pt = time.perf_counter() - t
    print(f"{len(files)} files, {notes} aligned notes")
    print(f"ours, parse only:            {notes / t_parse:10,.0f} notes/s")
    print(f"ours, parse + encode tokens: {notes / t_ours:10,.0f} notes/s")
    print(f"partitura.load_match:        {notes / t_pt:10,.0f} notes/s  (ours is {t_pt / t_ours:.1f}x faster)")
    import tempfile

    from instruct_tokenizer.musicxml import load_markings
    from instruct_tokenizer.scorefile import load_musicxml

    xml = sorted(NASAP.rglob("xml_score.musicxml"))[:5]
    t = time.perf_counter()
    for x in xml:
        load_musicxml(str(x))
    print(f"MusicXML (partitura, repeats unfolded): {(time.perf_counter() - t) / len(xml):.2f} s per score")
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        for x in xml:
            load_markings(str(x), cache)
        t_cold = (time.perf_counter() - t) / len(xml)
        t = time.perf_counter()
        for x in xml:
            load_markings(str(x), cache)
        t_warm = (time.perf_counter() - t) / len(xml)
    print(f"MusicXML markings: {t_cold:.2f} s per score parsed, {t_warm * 1000:.1f} ms per score from the cache")


if __name__ == "__main__":
    main()
