# Environment for deterministic, CPU-friendly runs (sourced by the scripts; the same values are set
# in conftest.py for plain `pytest` runs, except PYTHONHASHSEED which must be set before Python starts).
export PYTHONHASHSEED=0
export TOKENIZERS_PARALLELISM=false
export VLLM_ENABLE_V1_MULTIPROCESSING=0
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-0-1}
export VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-ERROR}
