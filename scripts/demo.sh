#!/usr/bin/env bash
# `make demo`: the whole product on the embedded data/, offline, on CPU, in a few minutes:
#   1. instruct-tokenize build   2. fairseq-preprocess   3. fairseq-train (tiny, CPU)
#   4. fairseq-generate the test split -> whole-performance MIDI (scripts/generate_to_midi.py)
#   5. instruct-render a held-out score   6. instruct-eval against its human performances and baselines
# Env: OUT (default outputs/demo), TRAIN_MINUTES (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
OUT=${OUT:-outputs/demo}
TRAIN_MINUTES=${TRAIN_MINUTES:-4}
SECONDS=0
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== 1/6 tokenize data/ (Vienna 4x22 subset)"
instruct-tokenize build data/vienna4x22/match --out "$OUT/tok" --split 0.5,0.25,0.25 --seed 0 \
  --max-tokens 1024 --overlap-bars 2 --workers 2 --no-progress

echo "== 2/6 fairseq-preprocess"
fairseq-preprocess --source-lang score --target-lang perf \
  --trainpref "$OUT/tok/train" --validpref "$OUT/tok/valid" --testpref "$OUT/tok/test" \
  --srcdict "$OUT/tok/dict.txt" --tgtdict "$OUT/tok/dict.txt" --destdir "$OUT/bin" --workers 2 \
  > "$OUT/preprocess.log" 2>&1

echo "== 3/6 fairseq-train museformer_s2p_tiny on CPU for ${TRAIN_MINUTES} min (log: $OUT/train.log)"
HOURS=$(python3 -c "print($TRAIN_MINUTES / 60)")
fairseq-train "$OUT/bin" --user-dir museformer --task museformer_s2p --arch museformer_s2p_tiny \
  --share-all-embeddings --style-embed --align-source --attention-impl dense --criterion label_smoothed_cross_entropy \
  --label-smoothing 0.05 --optimizer adam --adam-betas '(0.9,0.98)' --clip-norm 1.0 --lr 0.002 \
  --lr-scheduler inverse_sqrt --warmup-updates 50 --warmup-init-lr 1e-5 --max-tokens 4096 --cpu \
  --num-workers 0 --max-epoch 1000 --stop-time-hours "$HOURS" --save-dir "$OUT/ckpt" \
  --tensorboard-logdir "$OUT/tb" --no-epoch-checkpoints --log-format simple --log-interval 10 --seed 1 \
  > "$OUT/train.log" 2>&1
grep -E "\| valid \|" "$OUT/train.log" | tail -2 | sed 's/.*| valid |/  valid |/' || true
CKPT="$OUT/ckpt/checkpoint_best.pt"
[ -f "$CKPT" ] || CKPT="$OUT/ckpt/checkpoint_last.pt"  # a very short run may stop before validating

echo "== 4/6 fairseq-generate the test split (constrained sampling) -> $OUT/generate/*.mid"
fairseq-generate "$OUT/bin" --user-dir museformer --task museformer_s2p --path "$CKPT" --gen-subset test \
  --cpu --sampling --beam 1 --seed 1 --batch-size 8 > "$OUT/generate.txt" 2> "$OUT/generate.log"
python scripts/generate_to_midi.py "$OUT/generate.txt" "$OUT/tok" --split test --out "$OUT/generate"

TEST_XML=$(python3 - "$OUT/tok/manifest.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
title = next(r["title"] for r in rows if r["split"] == "test")
print(f"data/vienna4x22/musicxml/{title}.musicxml")
PY
)
echo "== 5/6 instruct-render the held-out score $TEST_XML"
instruct-render "$TEST_XML" --checkpoint "$CKPT" --data "$OUT/bin" -o "$OUT/render.mid"

echo "== 6/6 instruct-eval on the held-out piece (its human performances, deadpan, training mean)"
instruct-eval --tokens "$OUT/tok" --checkpoint "$CKPT" --data "$OUT/bin" --out "$OUT/eval"

echo
echo "demo done in ${SECONDS}s"
echo "  rendered MIDI:     $OUT/render.mid (fairseq-generate on the test split: $OUT/generate/)"
echo "  evaluation table:  $OUT/eval/results.md (JSON: results.json)"
echo "  plots:             $OUT/eval/curves-*.png"
echo "  tensorboard:       tensorboard --logdir $OUT/tb"
