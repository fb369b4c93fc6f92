#!/usr/bin/env bash
# Trains and packs the shipped default, `lite-ensemble2-ft-v3`: the setting that won the
# fine-tuning study's cross-validation (the model card's "Frozen, partial or full fine-tuning"),
# now trained on the train split of the combined data, best epoch and temperature on its
# validation split. Every step resumes (`--resume`) or is skipped when its output exists, so the
# script can be killed at any moment and started again. Progress goes to RUNS/default-v3.log.
#
#   tools/default-model.sh [STEP...]    # default: every step, in order
#
# Environment: as tools/finetune-study.sh (RUNS, SHARED, PNEUMOSCOPE).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-$HOME/.cache/pneumoscope/runs}
SHARED=${SHARED:-$(cd .. && pwd)/shared}
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/pneumoscope/target}
BIN=${PNEUMOSCOPE:-$TARGET/release/pneumoscope}
DATA=$RUNS/data-adults/manifest.csv
OUT=$RUNS/default-v3
LOG=$RUNS/default-v3.log
mkdir -p "$OUT"
log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$LOG"; }
[ -f "$DATA" ] || { echo "no $DATA: run tools/finetune-study.sh first (it builds the data)" >&2; exit 2; }
LITE0=$SHARED/weights/efficientnet-lite0-57934424.pth
LITE2=${WEIGHTS_DIR:-$HOME/.cache/pneumoscope/weights}/$("$BIN" weights list | awk '$1 == "efficientnet_lite2" {print $2}')

# One training run: skipped when finished, resumed when started.
run() {
  local name=$1
  shift
  if [ -f "$OUT/$name/metrics.json" ]; then log "$name: done"; return; fi
  local resume=()
  [ -f "$OUT/$name/config.json" ] && resume=(--resume)
  log "$name: start ${resume[*]}"
  "$BIN" train --data "$DATA" --imbalance group --seed 42 --out "$OUT/$name" "${resume[@]}" "$@" \
    >>"$LOG" 2>&1
  log "$name: $(tr -d '\n' <"$OUT/$name/metrics.json" | head -c 300)"
}

# An exported, calibrated f16 member (OOD statistics and the population estimate refitted on
# its own features).
export_member() {
  local name=$1
  [ -f "$OUT/$name.pneumoscope" ] && { log "$name: exported"; return; }
  log "$name: export"
  "$BIN" export --run "$OUT/$name" --out "$OUT/$name.pneumoscope.tmp" --f16 --calibrate >>"$LOG" 2>&1
  mv "$OUT/$name.pneumoscope.tmp" "$OUT/$name.pneumoscope"
}

step() {
  case $1 in
    # The LP-FT head: the paper's protocol on frozen features.
    lite0-frozen) run lite0-frozen --arch efficientnet_lite0 --weights "$LITE0" --mode frozen \
        --epochs 40 --batch-size 100 --lr 1e-3 ;;
    # Lite0, its last four blocks fine-tuned from that head, batch norm frozen.
    lite0-partial) run lite0-partial4-lpft-bnfrozen --arch efficientnet_lite0 --weights "$LITE0" \
        --mode partial --tune-blocks 4 --views 4 --bn frozen --init-head "$OUT/lite0-frozen" \
        --epochs 10 --lr 5e-4 --backbone-lr-scale 0.2 --schedule cosine --warmup-epochs 0.5 \
        --weight-decay 0.01 --batch-size 32 ;;
    # Lite2, frozen, the paper's head.
    lite2-frozen) run lite2-frozen --arch efficientnet_lite2 --weights "$LITE2" --mode frozen \
        --epochs 40 --batch-size 100 --lr 1e-3 ;;
    export-lite0) export_member lite0-partial4-lpft-bnfrozen ;;
    export-lite2) export_member lite2-frozen ;;
    # The lung segmenter's decoder, retrained on the fine-tuned Lite0's encoder (its last
    # blocks are no longer ImageNet's), so that the ensemble's Lite0 member can lend it.
    lungs)
      if [ -f "$OUT/lungs/lungs.pneumoscope" ]; then log "lungs: done"; return; fi
      local resume=()
      [ -d "$OUT/lungs" ] && resume=(--resume)
      log "lungs: start ${resume[*]}"
      "$BIN" lungs train --pairs "$SHARED/data/lung-masks/pairs.csv" \
        --encoder-model "$OUT/lite0-partial4-lpft-bnfrozen.pneumoscope" --epochs 40 --f16 \
        --out "$OUT/lungs" "${resume[@]}" >>"$LOG" 2>&1
      "$BIN" lungs evaluate --model "$OUT/lungs/lungs.pneumoscope" \
        --pairs "$SHARED/data/lung-masks/pairs.csv" >>"$LOG" 2>&1 ;;
    ensemble)
      [ -f "$OUT/lite-ensemble2-ft-v3.pneumoscope" ] && { log "ensemble: done"; return; }
      log "ensemble"
      "$BIN" ensemble --out "$OUT/ensemble.pneumoscope" --data "$DATA" --note "members and \
settings chosen by patient-grouped 5-fold cross-validation on train + val (the highest mean \
macro-F1 over every image with a class among settings with at most 3 % of adult normals called \
COVID-19)" "$OUT/lite0-partial4-lpft-bnfrozen.pneumoscope" "$OUT/lite2-frozen.pneumoscope" \
        >>"$LOG" 2>&1
      "$BIN" lungs embed --model "$OUT/ensemble.pneumoscope" --lungs "$OUT/lungs/lungs.pneumoscope" \
        --out "$OUT/lite-ensemble2-ft-v3.pneumoscope.tmp" >>"$LOG" 2>&1
      mv "$OUT/lite-ensemble2-ft-v3.pneumoscope.tmp" "$OUT/lite-ensemble2-ft-v3.pneumoscope" ;;
    *) echo "unknown step $1" >&2; exit 2 ;;
  esac
}

STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(lite0-frozen lite0-partial export-lite0 lungs lite2-frozen export-lite2
  ensemble)
for s in "${STEPS[@]}"; do step "$s"; done
log "default: done (${STEPS[*]})"
