"""The benchmarks (docs/benchmarks.md): run each as a module from the repository root,
``.venv/bin/python -m benchmarks.bench_loss``; ``timing`` and ``scan_data`` are their shared helpers."""
