"""Engines and scoring: rollouts with per-token log-probs from vLLM (in-process or a server) and
transformers (``rollout.py``), the one scoring path (``scoring.py``), a dump's missing series scored
by local models (``rescore.py``), the OpenAI-compatible server (``server.py``), chat prompts
(``chat.py``) and the environment defaults every engine starts from (``envdefaults.py``).
"""
