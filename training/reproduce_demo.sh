#!/usr/bin/env bash
# Reproduce the shipped demo model (models/demo.safetensors) by running every stage of its lineage again, each
# with the code of the commit it ran at, in order. About 12.3 hours on a 2-core CPU; stop it at any time and
# run the same command again to go on (a finished stage is skipped, a training stage resumes from its state).
#
#   bash training/reproduce_demo.sh OUT [FIRST_STAGE]
#
# OUT holds everything: runs/ (the stages' run folders, shared by all of them, as they were in one checkout),
# code/NN/ (each stage's code, exported from git), demo.safetensors (the model shipped so far, which a stage's
# `--init models/demo.safetensors` reads, as it read the model shipped at its time) and the result,
# OUT/demo.safetensors after the last stage. FIRST_STAGE (default 1) starts later in the lineage: the model
# shipped before it is taken from git's history, and OUT/runs must hold the run folders the later stages name.
#
# Needs a git clone of LongTake with its history (the stages' commits), and the Python that runs longtake.
# The table below is the lineage recorded in the shipped model; tests/test_demo_model.py checks that the two agree.
# Between stages, by hand at the time and here by the script: the VAE copied into the first denoiser run, that
# run's folder copied to resume it with the next commit's code, and the models that were shipped (in float16,
# as `--ship` writes them) after the stages marked "ship".
set -euo pipefail

out=$(realpath -m "${1:?usage: bash training/reproduce_demo.sh OUT [FIRST_STAGE]}")
first=${2:-1}
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

#      stage commit  shipped_after command (as recorded, without its leading `longtake`)
STAGES=(
  "1  a89d4a2 no   train vae --out runs/demo"
  "2  c945a58 no   train denoiser --out runs/demo2 --denoiser-steps 6000"
  "3  64bbe51 no   train denoiser --out runs/demo3 --denoiser-steps 7500"
  "4  1cd60f8 ship train demo --out runs/demo4 --init runs/demo3/model.safetensors --vae-steps 1500 --denoiser-steps 6000"
  "5  2a5778e ship train denoiser --out runs/demo5 --init runs/demo4/model.safetensors --denoiser-steps 8000"
  "6  91067d9 ship train vae --init runs/demo5/model.safetensors --decoder-only --frame-delay 2 --out runs/dec2 --vae-steps 2000"
  "7  7f91d00 no   train vae --out runs/dec3 --init models/demo.safetensors --decoder-only --vae-steps 10000"
  "8  2fda8dc ship train vae --out runs/dec4 --init runs/dec3/model.safetensors --decoder-only --vae-steps 5000"
  "9  61f9ee1 ship train denoiser --out runs/drift2 --init models/demo.safetensors --lr 1.5e-4 --denoiser-steps 3500 --drifted-share 0.5"
  "10 a824c27 no   train denoiser --out runs/ease2 --init models/demo.safetensors --lr 1e-4 --denoiser-steps 3500 --drifted-share 0.75 --drift-easing 2"
  "11 5aa8f14 ship train vae --out runs/ease_seam --init runs/ease2/model.safetensors --decoder-only --vae-steps 1000 --vae-lr 3e-4 --tint-noise 0.1 --seam-weight 1 --ship"
  "12 1270720 no   train denoiser --out runs/more --init models/demo.safetensors --lr 1e-4 --denoiser-steps 6000 --drifted-share 0.75 --drift-easing 2"
  "13 7e33236 ship train average --out runs/more --init models/demo.safetensors --ship"
)

git -C "$repo" rev-parse --verify --quiet 7e33236^{commit} >/dev/null || {
  echo "reproduce_demo: $repo has no git history with the lineage's commits; run it from a full git clone" >&2
  exit 2
}
mkdir -p "$out/runs" "$out/code" "$out/done"

# Starting later: the model shipped before FIRST_STAGE is the one git holds at that stage's commit.
if [ "$first" -gt 1 ] && [ ! -e "$out/demo.safetensors" ]; then
  commit=$(printf '%s\n' "${STAGES[@]}" | awk -v n="$first" '$1 == n {print $2}')
  git -C "$repo" show "$commit:models/demo.safetensors" > "$out/demo.safetensors"
fi

for line in "${STAGES[@]}"; do
  read -r stage commit shipped command <<< "$line"
  [ "$stage" -lt "$first" ] && continue
  [ -e "$out/done/$stage" ] && { echo "stage $stage done already"; continue; }
  echo "=== stage $stage at $commit: longtake $command"
  code="$out/code/$stage"
  rm -rf "$code" "$out/pkg"
  mkdir -p "$code" "$out/pkg"
  git -C "$repo" archive "$commit" | tar -x -C "$code"
  ln -s "$out/runs" "$code/runs"
  [ -e "$out/demo.safetensors" ] && cp "$out/demo.safetensors" "$code/models/demo.safetensors"
  ln -s "$code" "$out/pkg/longtake"

  case $stage in  # what was done by hand between stages
    2) mkdir -p "$out/runs/demo2" && cp "$out/runs/demo/vae.safetensors" "$out/runs/demo2/" ;;
    3) [ -e "$out/runs/demo3" ] || cp -r "$out/runs/demo2" "$out/runs/demo3" ;;  # resumed with this commit's code
  esac

  args=($command)
  if [ "$shipped" = ship ] && [[ " $command " != *" --ship "* ]]; then
    args+=(--ship)  # shipped by hand then: the same float16 file
  fi
  (cd "$code" && PYTHONPATH="$out/pkg" "$python" -m longtake "${args[@]}")
  [ "$shipped" = ship ] && cp "$code/models/demo.safetensors" "$out/demo.safetensors"
  touch "$out/done/$stage"
done
echo "reproduced: $out/demo.safetensors"
