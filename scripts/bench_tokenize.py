#!/usr/bin/env python
"""Tokenizer throughput: aligned notes/s of our match-only path vs partitura.load_match, same files,
same run (one core each), plus MusicXML parse time reported separately; ``--build`` also times a
whole (n)ASAP ``instruct-tokenize build`` (wall and CPU seconds).

Notes/s are given per CPU second of this process (``time.process_time``: one core, not disturbed by
other load on the machine) and per wall second.

    python scripts/bench_tokenize.py [--files 40] [--build --workers 2]
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
    ap.add_argument("--build", action="store_true", help="also time a whole (n)ASAP build")
    ap.add_argument("--workers", type=int, default=2, help="build workers")
    a = ap.parse_args()
    all_files = sorted(NASAP.rglob("*.match"))
    files = all_files[:: max(1, len(all_files) // a.files)][: a.files]

    def timed(fn):
        w, c = time.perf_counter(), time.process_time()
        fn()
        return time.process_time() - c, time.perf_counter() - w

    notes = sum(load_match(str(f)).n_played for f in files)  # also warms the page cache
    c_parse, w_parse = timed(lambda: [load_match(str(f)) for f in files])
    c_ours, w_ours = timed(lambda: [encode_match(load_match(str(f))) for f in files])
    import partitura as pt

    def partitura_all():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f in files:
                pt.load_match(str(f))

    c_pt, w_pt = timed(partitura_all)
    print(f"{len(files)} files, {notes} aligned notes; notes/s per CPU second (per wall second)")
    print(f"ours, parse only:            {notes / c_parse:10,.0f} ({notes / w_parse:,.0f})")
    print(f"ours, parse + encode tokens: {notes / c_ours:10,.0f} ({notes / w_ours:,.0f})")
    print(f"partitura.load_match:        {notes / c_pt:10,.0f} ({notes / w_pt:,.0f})  "
          f"(ours is {c_pt / c_ours:.1f}x faster)")
    if a.build:
        import resource
        import subprocess
        import tempfile

        exe = Path(sys.executable).parent / "instruct-tokenize"
        with tempfile.TemporaryDirectory() as out:
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            w = time.perf_counter()
            subprocess.run([str(exe), "build", str(NASAP), "--out", out, "--workers", str(a.workers),
                            "--no-progress"], check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - w
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(f"whole (n)ASAP build, {a.workers} workers: {wall:.1f} s wall, {cpu:.1f} CPU s "
              f"({cpu / a.workers:.1f} s per worker core)")
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
