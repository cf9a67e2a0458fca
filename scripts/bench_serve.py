#!/usr/bin/env python
"""Time the web page's path from opening a score to hearing it, and measure a passage re-render's joins.

    python scripts/bench_serve.py SCORE [--passage 20-27] [--style tempo=fast,dynamics=loud] [--seed 0]

Runs ``instruct-render serve``'s application in-process (Starlette's test client: the same routes, no
socket) with the released model. Prints: opening (reading the score and its deadpan reference), the
whole-piece rendering (the model alone), synthesising the performance to audio, and their sum, the time
from opening to hearing; the pictures; then a passage re-rendered with another style and seed: whether
every bar outside it kept its tokens, and the onset gap across each join (ms) against the same gap in
the first take.
"""
import argparse
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def passage_stats(score, perf, start, end):
    """(s from the first onset group of bar ``start`` to the first of bar ``end``, mean velocity of the
    notes in between) of a performance; bars 0-based, half-open."""
    import numpy as np

    from instruct_tokenizer.decode import decode_performance

    p = decode_performance(score, perf)
    tl = p.timeline
    inside = (tl.group_bar >= start) & (tl.group_bar < end)
    groups = np.nonzero(inside)[0]
    after = np.nonzero(tl.group_bar >= end)[0]
    t_end = p.group_grid_s[after[0]] if len(after) else p.offset_s[p.played].max()
    notes = inside[tl.note_group] & p.played
    return float(t_end - p.group_grid_s[groups[0]]), float(p.velocity[notes].mean())


def notated_gap(score, perf, bar):
    """(notated quarters between the last onset group before ``bar`` and the first in it, the median beat
    period (s per quarter) of the 8 onset groups up to the one before the join)."""
    import numpy as np

    from instruct_tokenizer.decode import decode_performance

    p = decode_performance(score, perf)
    tl = p.timeline
    g1 = int(np.nonzero(tl.group_bar >= bar)[0][0])
    return float(tl.group_q[g1] - tl.group_q[g1 - 1]), float(np.median(p.group_period_s[max(g1 - 8, 0):g1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("score", help="MusicXML or score MIDI")
    ap.add_argument("--passage", default="", help="bars FIRST-LAST to re-render (default: 8 bars from a third in)")
    ap.add_argument("--style", default="tempo=fast,dynamics=loud", help="style of the passage")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first take (the passage uses seed + 1)")
    ap.add_argument("--passage-settings", default="{}",
                    help='more settings of the passage, as the page sends them, e.g. \'{"tempo_band": 0}\'')
    a = ap.parse_args()

    from starlette.testclient import TestClient

    from museformer.render import DEFAULT_CHECKPOINT, parse_style
    from museformer.serve.app import create_app
    from museformer.serve.studio import Studio

    studio = Studio(str(DEFAULT_CHECKPOINT))
    t = time.perf_counter()
    studio.renderer()
    print(f"model load: {time.perf_counter() - t:.1f} s (once, when the server starts)")
    with TestClient(create_app(studio), base_url="http://127.0.0.1") as c:
        def cpu_s() -> float:
            """CPU seconds of this process and its finished children (FluidSynth): on a shared machine, the
            time the work would take alone, each part being single-threaded."""
            own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

        def timed(method, url, **kw):
            t0, c0 = time.perf_counter(), cpu_s()
            r = getattr(c, method)(url, **kw)
            if r.status_code != 200:
                raise SystemExit(f"bench_serve: {url}: {r.text}")
            return r, time.perf_counter() - t0, cpu_s() - c0

        first_sound = {}

        def run_job(body):
            """Run a render; for a whole piece, also fetch the audio of the first bars as soon as they are
            final (``first_sound``: seconds from the request to that audio, and how many bars)."""
            t0, c0 = time.perf_counter(), cpu_s()
            job = c.post("/api/render", json=body).json()
            while job.get("state") == "running":
                time.sleep(0.2)
                job = c.get(f"/api/job/{job['id']}").json()
                if job.get("preview_bars") and not first_sound:
                    c.get(f"/api/job/{job['id']}/preview.oga")
                    first_sound.update(s=time.perf_counter() - t0, bars=job["preview_bars"])
            if job.get("state") != "done":
                raise SystemExit(f"bench_serve: render failed: {job.get('error')}")
            return job, time.perf_counter() - t0, cpu_s() - c0

        r, open_s, open_cpu = timed("post", f"/api/open?name={Path(a.score).name}", content=Path(a.score).read_bytes())
        session = r.json()
        sid = session["id"]
        job, job_s, job_cpu = run_job({"session": sid, "settings": {"seed": a.seed}})
        take = job["take"]
        audio, synth_s, synth_cpu = timed("get", f"/api/take/{sid}/1/audio.oga")
        _, roll_s, _ = timed("get", f"/api/take/{sid}/1/roll.png")
        _, curves_s, _ = timed("get", f"/api/take/{sid}/1/curves.png")
        _, ref_s, _ = timed("get", f"/api/take/{sid}/0/audio.oga")
        print(f"score: {session['name']}: {session['bars']} bars, {session['notes']} notes; performance "
              f"{take['duration_s']:.0f} s, {take['notes_played']} notes played ({job['total']} segments)")
        print("wall-clock s (CPU s: the time alone on an idle machine, each part being single-threaded)")
        print(f"open (read the score, deadpan reference): {open_s:.1f} s ({open_cpu:.1f})")
        print(f"render (the model, whole piece): {take['render_s']:.1f} s, job {job_s:.1f} s ({job_cpu:.1f}); "
              f"real-time factor {take['render_s'] / take['duration_s']:.2f} ({job_cpu / take['duration_s']:.2f})")
        print(f"synthesis (FluidSynth, performance, {len(audio.content) / 2 ** 20:.1f} MB Ogg): {synth_s:.1f} s "
              f"({synth_cpu:.1f})")
        print(f"open to hearing it: {open_s + job_s + synth_s:.1f} s ({open_cpu + job_cpu + synth_cpu:.1f})")
        if first_sound:
            print(f"open to hearing the first {first_sound['bars']} bars (final, while the rest renders): "
                  f"{open_s + first_sound['s']:.1f} s")
        print(f"pictures: piano roll {roll_s:.1f} s, curves {curves_s:.1f} s; deadpan audio {ref_s:.1f} s")

        n = session["bars"]
        if a.passage:
            first, last = (int(x) for x in a.passage.split("-"))
        else:
            first = max(2, n // 3)
            last = min(n - 1, first + 7)
        style = parse_style(a.style)
        import json

        extra = json.loads(a.passage_settings)
        job, _, _ = run_job({"session": sid, "settings": {"seed": a.seed + 1, "style": style, **extra},
                          "first_bar": first, "last_bar": last})
        take2 = job["take"]
        bars1 = c.get(f"/api/take/{sid}/1/tokens").json()["bars"]
        bars2 = c.get(f"/api/take/{sid}/2/tokens").json()["bars"]
        outside = [k for k in range(n) if not first - 1 <= k < last]
        same = sum(bars1[k] == bars2[k] for k in outside)
        inside = sum(bars1[k] != bars2[k] for k in range(first - 1, last))
        print(f"passage bars {first}-{last}, {a.style}, seed {a.seed + 1} {extra or ''}: {take2['render_s']:.1f} s; "
              f"bars outside token-identical {same}/{len(outside)}; bars inside changed {inside}/{last - first + 1}")
        score = studio.session(sid).score_tokens
        perfs = [[t for b in bars for t in b] for bars in (bars1, bars2)]
        for k, perf in enumerate(perfs):
            length_s, velocity = passage_stats(score, perf, first - 1, last)
            print(f"  take {k + 1}: the passage lasts {length_s:.2f} s, mean velocity {velocity:.1f}")
        for j in take2["joins"]:
            notated_q, period_s = notated_gap(score, perfs[1], j["bar"] - 1)
            print(f"  join before bar {j['bar']}: onset gap {j['gap_ms']} ms (first take {j['base_gap_ms']} ms), "
                  f"grid gap {j['grid_ms']} ms (first take {j['base_grid_ms']} ms); notated gap {notated_q:g} "
                  f"quarters = {notated_q * period_s * 1000:.0f} ms at the median beat period of the 8 onsets "
                  f"before it ({period_s:.3f} s)")
    studio.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
