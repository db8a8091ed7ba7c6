"""The notebooks' exercises: the checkers (``exercises.py``, ``exercises_pairing.py`` over the
harness in ``exercise_base.py``) and the worked solutions (``solutions.py``).
"""
