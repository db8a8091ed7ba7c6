#!/usr/bin/env bash
# The whole when-does-IW-OPD-help sweep, one job at a time, in priority order; resumable (every run
# and every student is skipped when its file exists). Log: artifacts/when_sweep.log.
#   nohup bash scripts/when_sweep.sh >> artifacts/when_sweep.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export OMP_NUM_THREADS=1 VLLM_CPU_OMP_THREADS_BIND=0     # one thread: several times faster on a shared machine
py=.venv/bin/python
stage() { echo "== $(date +%T) $*"; "$@" || echo "!! $(date +%T) failed: $*"; }
student() {   # task size lr max_steps eval_every
  [ -f "data/study_students/$1/$2/config.json" ] || stage $py scripts/train_tiny_models.py --task "$1" \
    --student-size "$2" --threads 1 --student-lr "$3" --student-steps "$4" --eval-every "$5"
}
stage $py scripts/run_when.py --task main --student 200k --seeds 0 1 2 3 4
student main 50k 5e-3 3000 50
student main 800k 1.5e-3 2000 25
for s in 50k 800k; do stage $py scripts/run_when.py --task main --student $s --seeds 0 1 2; done
stage $py scripts/run_when.py --task answer_first --student 200k --seeds 0 1 2 3 4
student answer_first 50k 5e-3 3000 50
student answer_first 800k 1.5e-3 2000 25
for s in 50k 800k; do stage $py scripts/run_when.py --task answer_first --student $s --seeds 0 1 2; done
for d in float32 bfloat16; do
  stage $py scripts/run_when.py --task main --objectives iw_opd --seeds 0 --engine vllm --rollout-dtype $d --tis-pair
  stage $py scripts/run_when.py --task main --objectives iw_opd --seeds 0 --engine vllm --rollout-dtype $d --tis 5.0
done
for t in main answer_first; do for s in 50k 800k; do
  stage $py scripts/run_when.py --task $t --student $s --seeds 3 4
done; done
echo "== $(date +%T) sweep done"
