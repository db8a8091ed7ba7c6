"""Optional integrations with training frameworks (each needs its extra, e.g. ``iwopd_kit[trl]``)."""
