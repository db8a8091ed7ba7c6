"""What a user runs: the demo pipeline (``pipeline.py``), the on-policy training loop
(``train.py``), the check of a dump or a run's directory as one call (``service.py``: ``check_dump``,
returning ``check_result.py``'s types), and one flagged row replayed on vLLM and transformers
(``replay.py``; its verdict ``replay_rules.py``; the command ``replay_io.py``).
"""
