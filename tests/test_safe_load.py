"""No code runs from a dump unless the user says so: pickles only behind allow_pickle / --allow-pickle;
torch files weights-only, with tensordict's types allow-listed (the real tensordict package); a verl
DataProto pickle read without verl."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

import iwopd_kit as K
from iwopd_kit.cli import main
from iwopd_kit.formats import detect_format, load_any, to_verl_batch


class _Crafted:
    """Unpickling this runs ``touch MARKER`` (the 60-byte kind of file a bug report could carry)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _batch() -> K.Batch:
    comps = [[11, 12, 13], [14], [15, 16, 17, 2]]
    roll = [[-0.1 * (b + 1) - 0.01 * j for j in range(len(c))] for b, c in enumerate(comps)]
    return K.Batch(prompt_ids=[[1, 5], [1, 6, 7, 8], [1]], completion_ids=comps, rollout_logprobs=roll,
                   student_logprobs=[[v - 0.001 for v in r] for r in roll],
                   teacher_logprobs=[[v - 1.0 for v in r] for r in roll])


@pytest.mark.parametrize("name", ["crafted.pkl", "crafted.pickle"])
def test_crafted_pickle_runs_nothing_by_default(tmp_path, capsys, name):
    marker = tmp_path / "PWNED"
    path = tmp_path / name
    path.write_bytes(pickle.dumps([_Crafted(marker)]))
    assert len(path.read_bytes()) < 120
    with pytest.raises(K.BatchError) as e:
        load_any(path)
    msg = str(e.value)
    assert "not read: a pickle" in msg and "runs code" in msg and "system" in msg      # names what it would call
    assert "--allow-pickle" in msg and "iwopd-kit convert" in msg and "from_request_outputs" in msg
    for fmt in ("vllm", "verl_dataproto"):
        with pytest.raises(K.BatchError, match="not read: a pickle"):
            load_any(path, format=fmt)
    assert detect_format(path) == "vllm"                                              # opcodes only
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "--allow-pickle" in err and "Traceback" not in err
    assert main(["convert", str(path), str(tmp_path / "out.jsonl")]) == 2
    assert not marker.exists()                                                        # nothing ran
    # the same bytes under other names: JSON / JSONL / torch readers cannot execute them either
    for other in ("crafted.json", "crafted.jsonl", "crafted.pt"):
        (tmp_path / other).write_bytes(path.read_bytes())
        with pytest.raises(K.BatchError):
            load_any(tmp_path / other)
    torch.save({"input_ids": _Crafted(marker)}, tmp_path / "crafted2.pt")
    with pytest.raises(K.BatchError, match=r"crafted2.pt: not loaded: the file needs .*system.*weights-only"):
        load_any(tmp_path / "crafted2.pt")
    assert not marker.exists()
    # the test's pickle is live: with the flag (the user's explicit choice) it does run
    with pytest.raises(K.BatchError, match="expected vLLM RequestOutput"):
        load_any(path, allow_pickle=True)
    assert marker.exists()


def test_allow_pickle_help_says_it_runs_code(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--allow-pickle" in out and "RUNS CODE FROM THE FILE" in out


# ---------------------------------------------------------------------------------- tensordict
def _verl_tensordict():
    from tensordict import TensorDict

    d = to_verl_batch(_batch())
    keys = ("prompts", "responses", "attention_mask", "response_mask", "old_log_probs", "ref_log_prob",
            "rollout_log_probs")
    return TensorDict({k: d[k] for k in keys}, batch_size=[3])


def test_torch_saved_tensordict_reads_weights_only(tmp_path):
    td = _verl_tensordict()
    torch.save(td, tmp_path / "td.pt")
    torch.save(td.consolidate(), tmp_path / "td_consolidated.pt")
    src = _batch()
    for name in ("td.pt", "td_consolidated.pt"):
        assert detect_format(tmp_path / name) == "verl"
        got = load_any(tmp_path / name)
        assert got.prompt_ids == src.prompt_ids and got.completion_ids == src.completion_ids
        assert got.rollout_logprobs[2] == pytest.approx(src.rollout_logprobs[2])
        assert got.teacher_logprobs[0] == pytest.approx(src.teacher_logprobs[0])


def test_tensordict_without_the_package_is_a_clear_error(tmp_path):
    torch.save(_verl_tensordict(), tmp_path / "td.pt")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["tensordict"] = None          # as if tensordict were not installed
        from iwopd_kit.formats import load_any
        try:
            load_any({str(tmp_path / 'td.pt')!r})
        except Exception as e:
            print(type(e).__name__, e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "BatchError" in r.stdout and "install tensordict" in r.stdout and "weights-only" in r.stdout, r.stdout + r.stderr


# ------------------------------------------------------------------------------ verl DataProto
_FAKE_VERL = '''
import io, pickle
from dataclasses import dataclass, field
import torch
from tensordict import TensorDict

@dataclass
class DataProto:
    """verl.protocol.DataProto's pickling, as in verl: the batch goes through torch.save."""
    batch: TensorDict = None
    non_tensor_batch: dict = field(default_factory=dict)
    meta_info: dict = field(default_factory=dict)

    def __getstate__(self):
        buffer = io.BytesIO()
        torch.save(self.batch.contiguous().consolidate(), buffer)
        return buffer.getvalue(), self.non_tensor_batch, self.meta_info

    def __setstate__(self, data):
        raise AssertionError("verl's own __setstate__ (weights_only=False) must not be used")

    def save_to_disk(self, filepath):
        with open(filepath, "wb") as f:
            pickle.dump(self, f)
'''


def test_verl_dataproto_pickle_only_with_the_flag(tmp_path, monkeypatch):
    pkg = tmp_path / "fake" / "verl"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "protocol.py").write_text(_FAKE_VERL)
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    from verl.protocol import DataProto

    DataProto(batch=_verl_tensordict(), meta_info={"global_steps": 3}).save_to_disk(tmp_path / "step3.pkl")
    for mod in ("verl", "verl.protocol"):                  # read where verl is not installed
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.syspath_prepend(str(tmp_path / "nothing"))
    sys.path.remove(str(tmp_path / "fake"))
    path = tmp_path / "step3.pkl"
    assert detect_format(path) == "verl_dataproto"
    with pytest.raises(K.BatchError, match=r"not read: a pickle \(read as verl_dataproto, a verl DataProto.*names verl\.protocol\.DataProto"):
        load_any(path)
    got = load_any(path, allow_pickle=True)
    src = _batch()
    assert got.completion_ids == src.completion_ids and got.prompt_ids == src.prompt_ids
    assert got.student_logprobs[1] == pytest.approx(src.student_logprobs[1])
    assert "verl" not in sys.modules
