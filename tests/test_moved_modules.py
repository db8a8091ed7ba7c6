"""A module moved out of the old flat layout still imports by its old name (the same module object,
with a DeprecationWarning that names its home); a module that left the package says where it went."""

from __future__ import annotations

import importlib
import sys

import pytest

import iwopd_kit


@pytest.mark.parametrize("old", sorted(iwopd_kit._MOVED))
def test_an_old_module_name_is_the_moved_module(old, monkeypatch):
    monkeypatch.delitem(sys.modules, f"iwopd_kit.{old}", raising=False)
    with pytest.warns(DeprecationWarning, match=rf"iwopd_kit\.{old} moved to iwopd_kit\.{iwopd_kit._MOVED[old]}"):
        module = importlib.import_module(f"iwopd_kit.{old}")
    assert module is importlib.import_module(f"iwopd_kit.{iwopd_kit._MOVED[old]}")


def test_from_the_package_import_an_old_module_name(monkeypatch):
    monkeypatch.delitem(sys.modules, "iwopd_kit.scoring", raising=False)
    monkeypatch.delattr(iwopd_kit, "scoring", raising=False)
    with pytest.warns(DeprecationWarning):
        from iwopd_kit import scoring
    assert scoring.score_batch is iwopd_kit.score_batch


def test_no_old_module_name_is_a_public_name():
    # importing a submodule sets it as an attribute of the package: it would replace the public name
    assert set(iwopd_kit._MOVED) & set(iwopd_kit.__all__) == set()
    assert callable(iwopd_kit.rollout)


@pytest.mark.parametrize("old", sorted(iwopd_kit._LEFT))
def test_a_module_that_left_the_package_says_where_it_is(old):
    with pytest.raises(ModuleNotFoundError, match=f"{iwopd_kit._LEFT[old]} in the repository's checkout"):
        importlib.import_module(f"iwopd_kit.{old}")


def test_the_rooms_that_kept_a_module_name_re_export_it():
    from iwopd_kit import objective, toy
    from iwopd_kit.batch import Batch, read_jsonl

    assert Batch.__module__ == "iwopd_kit.batch.core" and read_jsonl is iwopd_kit.read_jsonl
    assert objective.prefix_weights is iwopd_kit.prefix_weights and toy.solve("1+2+3=") == toy.task.solve("1+2+3=") == "1+2=3,3+3=6"
