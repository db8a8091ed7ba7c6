# Environment for deterministic, CPU-friendly runs (sourced by the scripts). The values live in one
# table, iwopd_kit/engines/envdefaults.py (also used by iwopd_kit.engines.rollout and conftest.py); a variable
# already set in the environment keeps its value. Sets PYTHONHASHSEED, TOKENIZERS_PARALLELISM,
# VLLM_ENABLE_V1_MULTIPROCESSING, VLLM_CPU_KVCACHE_SPACE, VLLM_CPU_OMP_THREADS_BIND, VLLM_LOGGING_LEVEL.
eval "$(python3 "$(dirname "${BASH_SOURCE[0]}")/../iwopd_kit/engines/envdefaults.py")"
