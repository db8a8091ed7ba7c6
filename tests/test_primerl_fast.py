"""The fast prime-rl reader (iwopd_kit/formats/primerl_fast.py) gives the exact reader's Batch, or steps aside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from iwopd_kit.batch import BatchError
from iwopd_kit.formats import from_primerl_records
from iwopd_kit.formats.files import iter_jsonl
from iwopd_kit.formats.primerl_fast import read_primerl_fast
from iwopd_kit.formats.registry import read_dump
from iwopd_kit.batch.fields import RAGGED

from research import REPO_ROOT as ROOT
from run_fixtures import primerl_record, make_rows, write_primerl_run



def exact(path: Path):
    return from_primerl_records(rec for _, rec in iter_jsonl(path))


def assert_same(fast, slow) -> None:
    for name in RAGGED:
        a, b = fast.packed(name), slow.packed(name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.values.dtype == b.values.dtype, name
            assert np.array_equal(a.values.numpy(), b.values.numpy(), equal_nan=True), name
            assert np.array_equal(a.lengths, b.lengths), name
    fw, sw = fast.__dict__["_weights"] or {}, slow.__dict__["_weights"] or {}
    assert list(fw) == list(sw)
    for k in fw:
        assert fw[k].values.dtype == sw[k].values.dtype and np.array_equal(fw[k].values, sw[k].values), k
    assert fast.groups == slow.groups and fast.meta == slow.meta and fast.metric_pool == slow.metric_pool
    assert fast.findings == slow.findings == []
    assert fast.finish_reasons == slow.finish_reasons and fast.sampling == slow.sampling


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jsonl"))


def test_the_writer_fixtures_and_generated_runs_read_the_same(tmp_path):
    fixtures = _files(ROOT / "data" / "fixtures" / "primerl")
    run = write_primerl_run(tmp_path / "run", steps=range(1, 7))
    from benchmarks import scan_data

    scan_data.write_run(tmp_path / "big", 1, 1, 6, 300, shift_step=1)
    fast_read = 0
    for f in fixtures + _files(run) + _files(tmp_path / "big"):
        fast = read_primerl_fast(f)
        slow = exact(f)
        if slow.findings:                     # nulls: findings only the exact reader writes
            assert fast is None, f
            continue
        assert fast is not None, f
        assert_same(fast, slow)
        assert read_dump(f)[0].packed("completion_ids").values.equal(slow.packed("completion_ids").values)
        fast_read += 1
    assert fast_read >= len(fixtures) - 1 + 12 + 1      # every clean file (the fixtures' nulls step aside)


def _rec() -> dict:
    return primerl_record(make_rows(1, 0, 1)[0], 1, 0, 0)


def _line(rec: dict) -> str:
    return json.dumps(rec, separators=(",", ":"))


UNCLEAN = {
    "a null log-prob": lambda r: r["inference_logprobs"].__setitem__(-1, None),
    "a float token id": lambda r: r["token_ids"].__setitem__(0, 1.5),
    "a key the schema lacks": lambda r: r.update(new_key=1),
    "schema_version 2": lambda r: r.update(schema_version=2),
    "0/1 loss mask": lambda r: r.update(loss_mask=[int(v) for v in r["loss_mask"]]),
    "a short list": lambda r: r.update(entropy=[0.3]),
    "a stream null on some tokens": lambda r: r["rl_weights"].__setitem__(-1, 1.0),
    "a positive log-prob": lambda r: r["trainer_logprobs"].__setitem__(-1, 0.5),
    "no loss-masked token": lambda r: r.update(loss_mask=[False] * len(r["loss_mask"])),
}


@pytest.mark.parametrize("what", sorted(UNCLEAN))
def test_unclean_lines_go_to_the_exact_reader(tmp_path, what):
    bad = _rec()
    UNCLEAN[what](bad)
    path = tmp_path / "rank_0.jsonl"
    path.write_text(_line(_rec()) + "\n" + _line(bad) + "\n")
    assert read_primerl_fast(path) is None
    try:
        slow = exact(path)
    except BatchError as e:
        with pytest.raises(BatchError) as got:        # the exact reader's own error, naming the row
            read_dump(path, "primerl")
        assert str(got.value) == f"{path}: {e}" and "row 1" in str(e)
    else:
        batch, _ = read_dump(path, "primerl")
        assert batch.size == slow.size == 2 and batch.findings == slow.findings


def test_an_empty_line_or_bad_json_steps_aside(tmp_path):
    path = tmp_path / "rank_0.jsonl"
    path.write_text(_line(_rec()) + "\n\n")
    assert read_primerl_fast(path) is None
    path.write_text(_line(_rec())[:-5] + "\n")
    assert read_primerl_fast(path) is None
    with pytest.raises(BatchError, match="line 1"):
        read_dump(path, "primerl")
