#!/usr/bin/env bash
# The whole when-does-IW-OPD-help sweep, one job at a time, in priority order; resumable (every run
# and every student is skipped when its file exists). Log: artifacts/when_sweep.log.
#   nohup bash scripts/when_sweep.sh >> artifacts/when_sweep.log 2>&1 &
# WAIT_PID=<pid> makes it start after that process (an earlier stage still running) has ended.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export OMP_NUM_THREADS=1 VLLM_CPU_OMP_THREADS_BIND=0     # one thread: several times faster on a shared machine
py=.venv/bin/python
if [ -n "${WAIT_PID:-}" ]; then while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done; fi
stage() { echo "== $(date +%T) $*"; "$@" || echo "!! $(date +%T) failed: $*"; }
student() {   # task size lr max_steps eval_every
  [ -f "data/study_students/$1/$2/config.json" ] || stage $py scripts/train_tiny_models.py --task "$1" \
    --student-size "$2" --threads 1 --student-lr "$3" --student-steps "$4" --eval-every "$5"
}
# 1. the early-step protocol on the main task (bundled student, 5 seeds, 2048 eval prompts)
stage $py scripts/run_when.py --task main --student 200k --seeds 0 1 2 3 4
# 2. compression on the main task (3 seeds; 1024 eval prompts, the first half of the same file)
student main 50k 5e-3 3000 50
student main 800k 1.5e-3 2000 25
for s in 50k 800k; do stage $py scripts/run_when.py --task main --student $s --seeds 0 1 2 --eval-prompts 1024; done
# 3. the TIS pair: IW-OPD with and without TIS, float32 and bfloat16 vLLM rollout engines
for d in float32 bfloat16; do
  stage $py scripts/run_when.py --task main --objectives iw_opd --seeds 0 --engine vllm --rollout-dtype $d --tis-pair --eval-prompts 1024
  stage $py scripts/run_when.py --task main --objectives iw_opd --seeds 0 --engine vllm --rollout-dtype $d --tis 5.0 --eval-prompts 1024
done
# 4. the early-step protocol on answer_first
stage $py scripts/run_when.py --task answer_first --student 200k --seeds 0 1 2 3 4
# 5. compression on answer_first
student answer_first 50k 5e-3 3000 50
student answer_first 800k 1.5e-3 2000 25
for s in 50k 800k; do stage $py scripts/run_when.py --task answer_first --student $s --seeds 0 1 2 --eval-prompts 1024; done
# 6. more seeds for the compression sweep
for t in main answer_first; do for s in 50k 800k; do
  stage $py scripts/run_when.py --task $t --student $s --seeds 3 4 --eval-prompts 1024
done; done
echo "== $(date +%T) sweep done"
