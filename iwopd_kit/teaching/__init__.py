"""The notebooks' exercises: the checkers (``exercises.py``: the objective's, and every checker
re-exported; ``pairing.py``: which log-prob belongs to which token) over the exercise harness
(``harness.py``: cases, comparisons, messages), and the worked solutions (``solutions.py``).
"""
