#!/usr/bin/env bash
# Training recipe on (n)ASAP minus the Pianist Transformer test pieces:
#   tokenize -> fairseq-preprocess -> fairseq-train museformer_s2p (tensorboard, best checkpoint by
#   validation loss) -> score the checkpoints free-running on whole validation pieces (FREERUN) ->
#   release the best one as one fp16 file.
#
# Usage: scripts/train_nasap.sh [cpu|gpu]        (env: NASAP=path to unpacked (n)ASAP, OUT=work dir)
#   cpu: museformer_s2p_tiny, --attention-impl dense, 2 cores, about 2 hours (--stop-time-hours 2); at these
#        1,024-token segments dense measured 6,000 target tokens/s against 900 for the bar backend (whose
#        gathered per-bar tensors page-fault heavily on CPU; it pays off on long sequences and GPU);
#        a validated checkpoint every 1,000 updates, so that the benchmark can pick among them
#   gpu: --fp16, one GPU, --attention-impl dense (IMPL: measured fastest on an H100 at these segments);
#        ARCH: museformer_s2p (full size) by default, museformer_s2p_small fits the 30 MB release file;
#        MAX_TOKENS (16384) and UPDATE_FREQ (2); validated and saved every SAVE_EVERY (500) updates
#        (fairseq does not validate when --stop-time-hours stops it). Measured on one H100 (docs/attention.md):
#        the full-size defaults train at 150,000 target tokens/s (5 updates/s, an epoch in about 160 s);
#        ARCH=museformer_s2p_small MAX_TOKENS=32768 UPDATE_FREQ=1 LR=1e-3 WARMUP=400 SAVE_EVERY=400
#        AUGMENT=0 HOURS=0.085 trains at 300,000 target tokens/s (validation loss 4.128 in 5 minutes; it
#        renders too softly free-running, so it is not the released model: docs/experiments.md)
# The score side carries the instruct prefix, the notated tempo (QPM bar tokens) and the MusicXML markings,
# dropped for half of the performances so that the model also renders score MIDI (no markings) well.
# BUILD_EXTRA adds instruct-tokenize build flags, e.g. --marking-state (measured: per-note velocity r up,
# whole-piece distributions worse; docs/experiments.md).
# AUGMENT=0 skips transposition/tempo augmentation (a CPU run sees well under one epoch: it adds nothing).
# TEMPO_SCALES (0.9,1.1) are the tempo-scaled copies' factors on the performance times; each copy's notated
# tempo (QPM) is scaled by the inverse, so that the copies teach the model to follow the tempo it is told
# (docs/experiments.md section 15). AUGMENT=tempo makes the tempo copies only (no transpositions).
# FIT_DICT=FILE maps the build onto an older model's dictionary before fairseq-preprocess
# (scripts/fit_to_dictionary.py: a value the dictionary lacks becomes its nearest one), e.g. to fine-tune
# the released model (INIT=checkpoints/instruct-museformer.pt, its dictionary from release_checkpoint's
# "dictionary" entry) on a later build without new embedding rows.
# --style-embed carries the instruct prefix to every position (without it the model ignored the prefix);
# --align-source gives each decoder step its own score note; --decoder-input-dropout (INPUT_DROPOUT) hides
# a share of the previous performance tokens in training, against the free-running velocity drift.
# INIT=CKPT warm-starts from a checkpoint's weights (optimizer, schedule and data order start afresh; a
# checkpoint trained without --style-embed gets a zero style projection, one whose dictionary is the first
# entries of the build's, e.g. the released absolute-tempo model on a relative build, zero rows for the new
# tokens: docs/experiments.md section 14); LR and WARMUP set the schedule.
# ANCHOR=FILE (with INIT) fine-tunes with --criterion museformer_anchored_ce: every target type but
# ANCHOR_FREE (default Tempo) is pulled towards FILE's predictions by a KL term of weight ANCHOR_WEIGHT (1),
# so that the tempo learns from the data and the rest stays where FILE has it (docs/experiments.md section 16).
# SS_RATE=P trains with --criterion museformer_scheduled_sampling: up to a share P of the decoder's previous
# performance tokens are its own type-constrained samples from a first pass (exposure bias), ramped from 0 over
# SS_RAMP (1000) updates (docs/experiments.md section 29). ANCHOR and SS_RATE are exclusive.
# HOURS is fairseq's --stop-time-hours: cumulative training time, including that of a restored checkpoint.
# DATA_BIN=DIR trains on an existing fairseq-preprocess output (skips tokenize and preprocess); BIN is the
# folder holding fairseq-train and python (.venv/bin; scripts/gpu/device_run.sh points it elsewhere).
# OVERSAMPLE=TOKEN:TIMES repeats the training examples whose score holds TOKEN (scripts/oversample_lines.py),
# e.g. After_fermata:8: a warm-started model sees the rare token often enough to learn it.
# PLANS=1 (default) fits the tempo, velocity, articulation and timing plans on $TOK after the release (scripts/fit_plan.py,
# about 62 minutes on 2 cores; the tempo plan is the mean of PLAN_MEMBERS=3 fits, seeds 0, 1, 2) and stores them in
# the release file; PLANS=0 skips them (the plan rules then do nothing). TEMPO_SPREAD (1.75, chosen on the validation
# renderings, docs/experiments.md section 20) stretches the tempo plan's curve; TEMPO_SPREAD=fit keeps the fitted one.
# TEMPO_PHRASE=1 (default, the release's) lets the tempo plan read where phrases end (fit_plan.py --phrase-features,
# docs/experiments.md section 22); TEMPO_PHRASE=0: the base features.
# ART_FOLDS=K (0, the release's: off) fits the articulation plan's offsets per notated length on every training piece
# too, read out of fold (fit_plan.py --cross-fit K; 3 folds: 17 more minutes on 2 cores; docs/experiments.md section 22).
# EXTRA adds fairseq-train flags (e.g. --max-update); RELEASE=0 skips the release file. The cpu profile also
# takes THREADS (2), SAVE_EVERY (1000) and MAX_TOKENS (4096).
# FREERUN picks the released checkpoint by how it plays whole validation pieces free-running
# (scripts/select_checkpoint.py: overall JS, beat tempo r, velocity r, length ratio; tensorboard tags
# freerun/* under $OUT/tb/freerun; $OUT/ckpt/freerun_scores.json): "after" (the cpu default) scores the
# kept interval checkpoints once training ends, "watch" (the gpu default) scores each one while training
# runs (on the CPU), 0 skips it; FREERUN_ARGS sets its flags (default --max-pieces 4 --per-piece 1) and
# TOK the tokenized build it reads (default $OUT/tok). The release takes checkpoint_best_freerun.pt when
# present, else checkpoint_best.pt (validation loss).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-cpu}
NASAP=${NASAP:-../shared/datasets/nasap}
OUT=${OUT:-outputs/nasap}
HOURS=${HOURS:-2}
AUGMENT=${AUGMENT:-1}
INIT=${INIT:-}
AUG_FLAGS=()
# RELATIVE=1 (default): tempo relative to the notated tempo (TempoLevel + TempoRel), and a score without a
# metronome mark built at the tempo instruct-render infers for it (--infer-tempo); RELATIVE=0: the absolute
# Tempo encoding with 120 for unmarked scores (the encoding of the models released before 2026-12-04)
TEMPO_FLAGS=(--relative-tempo --infer-tempo)
[ "${RELATIVE:-1}" = 0 ] && TEMPO_FLAGS=()
# BEAT_GRID=1: one tempo per quarter-note beat, the off-beat groups' timing in Time (--beat-grid)
[ "${BEAT_GRID:-0}" = 1 ] && TEMPO_FLAGS+=(--beat-grid)
WARM=()
[ -n "$INIT" ] && WARM=(--restore-file "$INIT" --reset-optimizer --reset-lr-scheduler --reset-dataloader --reset-meters)
TEMPO_SCALES=${TEMPO_SCALES:-0.9,1.1}
[ "$AUGMENT" = 1 ] && AUG_FLAGS=(--augment-transpose=-3,3 "--augment-tempo=$TEMPO_SCALES")
[ "$AUGMENT" = tempo ] && AUG_FLAGS=("--augment-tempo=$TEMPO_SCALES")
BIN=${BIN:-.venv/bin}
DATA_BIN=${DATA_BIN:-}
TOK=${TOK:-$OUT/tok}
FREERUN=${FREERUN:-$([ "$PROFILE" = gpu ] && echo watch || echo after)}
FREERUN_ARGS=${FREERUN_ARGS:---max-pieces 4 --per-piece 1}
mkdir -p "$OUT"
if [ -z "$DATA_BIN" ]; then
[ -d "$NASAP" ] || { echo "train_nasap: error: $NASAP: (n)ASAP not found (../shared/datasets/unpack makes it)" >&2; exit 1; }

MAX_TOKENS_EXAMPLE=${MAX_TOKENS_EXAMPLE:-1024}
$BIN/instruct-tokenize build "$NASAP" --out "$OUT/tok" --seed 1 --split 0.9,0.1,0 \
  --test-pieces ../shared/benchmarks/pianist_transformer_testset/pieces.csv \
  --max-tokens "$MAX_TOKENS_EXAMPLE" --overlap-bars 2 --workers 2 "${AUG_FLAGS[@]}" \
  --instruct --notated-tempo "${TEMPO_FLAGS[@]}" --xml-markings --markings-dropout 0.5 ${BUILD_EXTRA:-}

TOKDIR="$OUT/tok"
if [ -n "${FIT_DICT:-}" ]; then
  $BIN/python scripts/fit_to_dictionary.py "$OUT/tok" "$FIT_DICT" --out "$OUT/tokfit"
  TOKDIR="$OUT/tokfit"
fi
TRAINPREF="$TOKDIR/train"
if [ -n "${OVERSAMPLE:-}" ]; then
  $BIN/python scripts/oversample_lines.py "$TOKDIR" --token "${OVERSAMPLE%%:*}" --times "${OVERSAMPLE##*:}" \
    --out-prefix "$TOKDIR/train.os"
  TRAINPREF="$TOKDIR/train.os"
fi
rm -rf "$OUT/bin"
$BIN/fairseq-preprocess --source-lang score --target-lang perf \
  --trainpref "$TRAINPREF" --validpref "$TOKDIR/valid" --testpref "$TOKDIR/test" \
  --srcdict "$TOKDIR/dict.txt" --tgtdict "$TOKDIR/dict.txt" --destdir "$OUT/bin" --workers 2
DATA_BIN="$OUT/bin"
fi

CRITERION=(--criterion label_smoothed_cross_entropy)
[ -n "${ANCHOR:-}" ] && CRITERION=(--criterion museformer_anchored_ce --anchor-model "$ANCHOR"
  --anchor-weight "${ANCHOR_WEIGHT:-1}" --anchor-free-types "${ANCHOR_FREE:-Tempo}")
if [ -n "${SS_RATE:-}" ]; then
  [ -n "${ANCHOR:-}" ] && { echo "train_nasap: error: ANCHOR and SS_RATE cannot be combined" >&2; exit 1; }
  CRITERION=(--criterion museformer_scheduled_sampling --ss-rate "$SS_RATE" --ss-ramp-updates "${SS_RAMP:-1000}")
fi
COMMON=(--user-dir museformer --task museformer_s2p "${CRITERION[@]}"
  --label-smoothing 0.05 --optimizer adam --adam-betas '(0.9,0.98)' --clip-norm 1.0
  --lr-scheduler inverse_sqrt --warmup-updates "${WARMUP:-500}" --dropout 0.1 --share-all-embeddings --style-embed --align-source
  --decoder-input-dropout "${INPUT_DROPOUT:-0.2}"
  --max-source-positions 2048 --max-target-positions 2048
  --save-dir "$OUT/ckpt" --tensorboard-logdir "$OUT/tb" --keep-last-epochs 1
  --best-checkpoint-metric loss --log-format simple --log-interval 20 --seed "${SEED:-1}" "${WARM[@]}")
select_checkpoint() {  # select_checkpoint [--watch ...]: free-running scores of $OUT/ckpt (see FREERUN)
  $BIN/python scripts/select_checkpoint.py "$OUT/ckpt" --tokens "$TOK" --data "$DATA_BIN" --tb "$OUT/tb/freerun" \
    $FREERUN_ARGS "$@"
}
if [ "$FREERUN" != 0 ] && [ ! -f "$TOK/manifest.jsonl" ]; then
  echo "train_nasap: $TOK: no tokenized build, so no free-running checkpoint selection (set TOK)" >&2
  FREERUN=0
fi
mkdir -p "$OUT/ckpt"
rm -f "$OUT/ckpt/.training_done"
WATCHER=
if [ "$FREERUN" = watch ]; then
  select_checkpoint --watch --done-file "$OUT/ckpt/.training_done" --poll 60 &
  WATCHER=$!
  trap 'touch "$OUT/ckpt/.training_done"' EXIT  # a failed training run still stops the watcher
fi
if [ "$PROFILE" = gpu ]; then
  $BIN/fairseq-train "$DATA_BIN" "${COMMON[@]}" --arch "${ARCH:-museformer_s2p}" --attention-impl "${IMPL:-dense}" \
    --fp16 --lr "${LR:-5e-4}" --max-tokens "${MAX_TOKENS:-16384}" --update-freq "${UPDATE_FREQ:-2}" \
    --max-epoch 200 --stop-time-hours "$HOURS" --num-workers 4 \
    --save-interval-updates "${SAVE_EVERY:-500}" --keep-interval-updates 2 ${EXTRA:-}
else
  OMP_NUM_THREADS=${THREADS:-2} $BIN/fairseq-train "$DATA_BIN" "${COMMON[@]}" --arch museformer_s2p_tiny \
    --attention-impl dense --save-interval-updates "${SAVE_EVERY:-1000}" --keep-interval-updates 6 --cpu \
    --lr "${LR:-1e-3}" --max-tokens "${MAX_TOKENS:-4096}" --max-epoch 200 --stop-time-hours "$HOURS" \
    --num-workers 0 ${EXTRA:-}
fi
touch "$OUT/ckpt/.training_done"
if [ -n "$WATCHER" ]; then
  wait "$WATCHER"
elif [ "$FREERUN" = after ]; then
  select_checkpoint
fi
[ "${RELEASE:-1}" = 1 ] || exit 0
BEST="$OUT/ckpt/checkpoint_best_freerun.pt"
[ -f "$BEST" ] || BEST="$OUT/ckpt/checkpoint_best.pt"
[ -f "$BEST" ] || { echo "train_nasap: error: $OUT/ckpt/checkpoint_best.pt: no validated checkpoint to release" >&2; exit 1; }
$BIN/python scripts/release_checkpoint.py "$BEST" "$OUT/instruct-museformer.pt" --data "$DATA_BIN"
if [ "${PLANS:-1}" = 1 ] && [ -f "$TOK/manifest.jsonl" ]; then  # the plans (docs/decoding.md)
  $BIN/python scripts/fit_plan.py "$TOK" --what tempo --members "${PLAN_MEMBERS:-3}" --json "$OUT/plan_tempo.json" \
      $([ "${TEMPO_PHRASE:-1}" = 1 ] && echo --phrase-features) \
      $([ "${TEMPO_SPREAD:-1.75}" != fit ] && echo --spread "${TEMPO_SPREAD:-1.75}") --into "$OUT/instruct-museformer.pt"
  $BIN/python scripts/fit_plan.py "$TOK" --what velocity --json "$OUT/plan_velocity.json" --into "$OUT/instruct-museformer.pt"
  $BIN/python scripts/fit_plan.py "$TOK" --what articulation $([ "${ART_FOLDS:-0}" != 0 ] && echo --cross-fit "$ART_FOLDS") \
      --json "$OUT/plan_articulation.json" --into "$OUT/instruct-museformer.pt"
  $BIN/python scripts/fit_plan.py "$TOK" --what timing --json "$OUT/plan_timing.json" --into "$OUT/instruct-museformer.pt"
fi
echo "released checkpoint: $BEST; release candidate: $OUT/instruct-museformer.pt"
