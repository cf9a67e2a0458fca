#!/usr/bin/env bash
# `make demo`: offline, on CPU, in a few minutes.
#   The main job, with the released model (checkpoints/instruct-museformer.pt):
#     1. instruct-render an embedded score it was not trained on (Mozart K331, 1st movement, Vienna 4x22;
#        (n)ASAP, its training data, holds only the 3rd movement of K331) -> a performance MIDI
#     2. instruct-eval: the model on that piece against its 4 embedded human performances, beside the
#        deadpan, markings and training-mean baselines, with tempo/velocity curve plots
#   Then a pipeline check, not a model: instruct-tokenize build -> fairseq-preprocess -> fairseq-train
#   (tiny, TRAIN_MINUTES on CPU) -> fairseq-generate -> MIDI, proving that the fairseq path runs.
# Env: OUT (default outputs/demo), TRAIN_MINUTES (default 1), PIECE (a Vienna 4x22 piece in data/; the
# other unseen one, Schubert_D783_no15, states no tempo: its content estimate, 127 quarter notes per minute,
# plays it at 0.94 of its pianists' median tempo, docs/model-card.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
OUT=${OUT:-outputs/demo}
TRAIN_MINUTES=${TRAIN_MINUTES:-1}
PIECE=${PIECE:-Mozart_K331_1st-mov}
MODEL=checkpoints/instruct-museformer.pt
SECONDS=0
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== 1/2 the released model renders data/vienna4x22/musicxml/$PIECE.musicxml"
instruct-render "data/vienna4x22/musicxml/$PIECE.musicxml" --checkpoint "$MODEL" -o "$OUT/render.mid" --seed 0 \
  | sed 's/^/  /'
echo "  ($SECONDS s so far)"

echo
echo "== 2/2 the same model on $PIECE against its 4 human performances (data/vienna4x22/match)"
echo "   rows: the model (one rendering per human performance, from its match score, sampled, seed 0);"
echo "   deadpan (notated durations, 120 BPM, velocity 64); markings (rules from the notated dynamics and"
echo "   tempo words); training mean (the other 3 embedded pieces' mean tempo, velocity, articulation);"
echo "   human (the performances against each other: the ceiling). r: per-note Pearson r with the human"
echo "   performance (higher is better); js: Jensen-Shannon distance of the distributions (lower is better)."
echo "   The Mozart and Schubert recordings of Vienna 4x22 have MIDI velocities of about 99 on average, against"
echo "   about 65 in (n)ASAP and the corpus's Chopin (another calibration): velocity js is high for every row"
echo "   there; r is unaffected."
printf "composer,title\n%s,%s\n" "${PIECE%%_*}" "$PIECE" > "$OUT/piece.csv"
instruct-tokenize build data/vienna4x22/match --out "$OUT/eval-tok" --split 1,0,0 --test-pieces "$OUT/piece.csv" \
  --workers 2 --no-progress > "$OUT/eval-tok.log"
instruct-eval --tokens "$OUT/eval-tok" --checkpoint "$MODEL" --split test --out "$OUT/eval" | grep -v "^wrote"
echo "  ($SECONDS s so far)"

echo
echo "== pipeline check, not a model: tokenize -> preprocess -> train ${TRAIN_MINUTES} min -> generate"
instruct-tokenize build data/vienna4x22/match --out "$OUT/check/tok" --split 0.5,0.25,0.25 --seed 0 \
  --max-tokens 1024 --overlap-bars 2 --workers 2 --no-progress | tail -1 | sed 's/^/  /'
fairseq-preprocess --source-lang score --target-lang perf \
  --trainpref "$OUT/check/tok/train" --validpref "$OUT/check/tok/valid" --testpref "$OUT/check/tok/test" \
  --srcdict "$OUT/check/tok/dict.txt" --tgtdict "$OUT/check/tok/dict.txt" --destdir "$OUT/check/bin" --workers 2 \
  > "$OUT/check/preprocess.log" 2>&1
HOURS=$(python3 -c "print($TRAIN_MINUTES / 60)")
fairseq-train "$OUT/check/bin" --user-dir museformer --task museformer_s2p --arch museformer_s2p_tiny \
  --share-all-embeddings --style-embed --align-source --attention-impl dense --criterion label_smoothed_cross_entropy \
  --label-smoothing 0.05 --optimizer adam --adam-betas '(0.9,0.98)' --clip-norm 1.0 --lr 0.002 \
  --lr-scheduler inverse_sqrt --warmup-updates 50 --warmup-init-lr 1e-5 --max-tokens 4096 --cpu \
  --num-workers 0 --max-epoch 1000 --stop-time-hours "$HOURS" --save-dir "$OUT/check/ckpt" \
  --tensorboard-logdir "$OUT/check/tb" --no-epoch-checkpoints --log-format simple --log-interval 10 --seed 1 \
  > "$OUT/check/train.log" 2>&1
grep -E "\| valid \|" "$OUT/check/train.log" | tail -1 | sed 's/.*| valid |/  fairseq-train, last validation |/' || true
CKPT="$OUT/check/ckpt/checkpoint_best.pt"
[ -f "$CKPT" ] || CKPT="$OUT/check/ckpt/checkpoint_last.pt"  # a very short run may stop before validating
fairseq-generate "$OUT/check/bin" --user-dir museformer --task museformer_s2p --path "$CKPT" --gen-subset test \
  --cpu --sampling --beam 1 --seed 1 --batch-size 8 > "$OUT/check/generate.txt" 2> "$OUT/check/generate.log"
python scripts/generate_to_midi.py "$OUT/check/generate.txt" "$OUT/check/tok" --split test \
  --out "$OUT/check/generate" | tail -1 | sed 's/^/  fairseq-generate -> /'

echo
echo "demo done in ${SECONDS}s"
echo "  the released model's rendering:  $OUT/render.mid"
echo "  its evaluation on the piece:     $OUT/eval/results.md (JSON: results.json; every row's MIDI: $OUT/eval/midi/)"
echo "  tempo and velocity curves:       $OUT/eval/curves-*.png"
echo "  pipeline check (not a model):    $OUT/check/ (generated MIDI: $OUT/check/generate/; tensorboard --logdir $OUT/check/tb)"
