"""The research around the kit, kept out of the wheel: the position-bias study (``study.py``), its
statistics (``study_stats.py``) and figures (``figures.py``), the seeded random-weight models
at a real vocabulary used for calibration (``random_models.py``), and what the two training scripts
share (``tiny_training.py``: model sizes and builder, learning-rate schedule, batch collation,
exact-match evaluation).

Checkout-only: ``scripts/setup.sh`` puts the repository root on the virtual environment's path
(a ``.pth`` file), so ``import research`` works in scripts, tests and notebook kernels.
"""

from pathlib import Path

#: The repository's checkout (the folder that holds ``iwopd_kit/``, ``research/``, ``docs/``, ``data/``).
REPO_ROOT: Path = Path(__file__).resolve().parents[1]
