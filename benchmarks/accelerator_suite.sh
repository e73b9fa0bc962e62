#!/usr/bin/env bash
# The accelerator checks, as one short script (issue 19: under 10 minutes on one GPU):
#   1. MJX control steps/s for PickPlace at E = 256 ... 8192 (benchmarks.env_throughput);
#   2. the ResFiT loop's env steps/s with learning at E = 256, 1024, 4096 and 0.25 critic
#      steps per env step (benchmarks.loop_throughput);
#   3. critic updates/s of the paper-scale learner at UTD 4 and 8 (benchmarks.learner_throughput);
#   4. the paper-scale preset's first evaluation on PickPlace, on a BC base trained in the run
#      (experiments.train_bc, then experiments.train --scale=paper --stop_at=10000);
#   5. pixel envs: step + render frames/s at 64 and 84 px (benchmarks.render_throughput),
#      only where warp-lang is importable (its wheel, 149 MB, is over the carry limit);
#   6. with several GPUs only: the sharded loop's env and critic steps/s against the device
#      count (benchmarks.scaling, 1024 envs per device; docs/scaling.md).
# Every step has its own time limit, so a slow one costs its share only; everything lands in
# $OUT (default benchmarks/results/accelerator): device.txt, suite.log, three JSON files and
# paper_metrics.jsonl, each with the machine description.
#
# The GPU image has JAX but not MuJoCo: fetch the missing wheels once where PyPI is reachable,
#   bash benchmarks/accelerator_suite.sh --fetch-wheels      # into .whl/ (git-ignored)
# then carry .whl to the machine (device tool: carry [".whl"]) and run
#   bash benchmarks/accelerator_suite.sh
# --smoke runs every step at toy sizes (a check of the script itself, on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(mujoco==3.17.0 mujoco-mjx==3.17.0 glfw pyopengl trimesh tensorboardX)
if [[ "${1:-}" == "--fetch-wheels" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl "${WHEELS[@]}"
fi
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1

PY="${PYTHON:-python3}"
[[ -x .venv/bin/python && -z "${PYTHON:-}" && $SMOKE == 1 ]] && PY=.venv/bin/python
if ! "$PY" -c "import mujoco.mjx" >/dev/null 2>&1; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "mujoco-mjx is not installed and .whl/ holds no wheels: run --fetch-wheels first" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
export RESFIT_JAX_CACHE_DIR="${RESFIT_JAX_CACHE_DIR:-/tmp/resfit_jax_cache}"
DEST="${OUT:-benchmarks/results/accelerator}"
mkdir -p "$DEST"
LOG="$DEST/suite.log"
: > "$LOG"
(nvidia-smi 2>&1 || echo "no nvidia-smi"; "$PY" -c "import jax; print(jax.devices())") \
  > "$DEST/device.txt" 2>&1

if [[ $SMOKE == 1 ]]; then
  MJX_ENVS=16; LOOP_ENVS=16; LOOP=(--steps_per_chunk=8 --chunks=1); UTDS=1; PRESET=cpu
  BC=(--steps=20 --demo_episodes=4 --eval_every=20 --eval_episodes=2 --final_episodes=2
      --num_envs=2)
  PAPER=(--scale=cpu --stop_at=64 --config.warmup_env_steps=64 --config.critic_warmup_updates=4
         --config.critic_warmup_chunk=2 --config.total_env_steps=128 --config.eval_every=64
         --config.eval_episodes=2 --config.steps_per_chunk=4)
  LIMITS=(300 600 300 600 900 600); RENDER=(--envs=2 --resolutions=32 --scan=2 --min_seconds=0.5)
else
  MJX_ENVS=256,1024,4096,8192; LOOP_ENVS=256,1024,4096; LOOP=(); UTDS=4,8; PRESET=paper
  BC=(--steps=2000 --demo_episodes=30 --eval_every=1000 --eval_episodes=50 --final_episodes=50
      --num_envs=50)
  PAPER=(--scale=paper --stop_at=10000)
  LIMITS=(100 150 60 90 150 40); RENDER=(--envs=256,1024 --resolutions=64,84 --scan=5 --min_seconds=1)
fi

step() {   # step NAME LIMIT_S python -m args...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$PY" -m "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$LOG"
  return 0
}

step env_throughput "${LIMITS[0]}" benchmarks.env_throughput --tasks=PickPlace \
  --envs="$MJX_ENVS" --min_seconds=2 --out="$DEST/env_throughput.json"
step loop_throughput "${LIMITS[1]}" benchmarks.loop_throughput --envs="$LOOP_ENVS" \
  --critic_per_env_step=0.25 "${LOOP[@]}" --out="$DEST/loop_throughput.json"
step learner_throughput "${LIMITS[2]}" benchmarks.learner_throughput --presets="$PRESET" \
  --utds="$UTDS" --min_seconds=2 --out="$DEST/learner_throughput.json"
RUNS="${TMPDIR:-/tmp}/resfit_accel_runs"
rm -rf "$RUNS"
step train_bc "${LIMITS[3]}" experiments.train_bc --task=PickPlace "${BC[@]}" \
  --out="$RUNS/bc"
step paper_residual "${LIMITS[4]}" experiments.train --task=PickPlace \
  --base="$RUNS/bc" --out="$RUNS/residual" "${PAPER[@]}"
[[ -f "$RUNS/residual/metrics.jsonl" ]] && cp "$RUNS/residual/metrics.jsonl" "$DEST/paper_metrics.jsonl"
if "$PY" -c "import warp" >/dev/null 2>&1; then
  step render_throughput "${LIMITS[5]}" benchmarks.render_throughput --tasks=PickPlace \
    "${RENDER[@]}" --out="$DEST/render_throughput.json"
else
  echo "== render_throughput: skipped (warp-lang is not installed here)" | tee -a "$LOG"
fi
NGPU=$("$PY" -c "import jax; print(jax.device_count() if jax.default_backend() != 'cpu' else 1)" 2>/dev/null || echo 1)
if [[ $SMOKE == 1 || $NGPU -gt 1 ]]; then
  if [[ $SMOKE == 1 ]]; then SCALE=(--task=PointReach --devices=1,2 --envs_per_device=4 --chunks=1)
  else SCALE=(--devices=1,2,4,8 --envs_per_device=1024 --timeout=120); fi
  step scaling 600 benchmarks.scaling "${SCALE[@]}" --out="$DEST/scaling.json"
else
  echo "== scaling: skipped (one device)" | tee -a "$LOG"
fi
echo "results in $DEST:" | tee -a "$LOG"
ls "$DEST" | tee -a "$LOG"
