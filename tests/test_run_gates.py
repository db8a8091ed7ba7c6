"""The frameworks' masking rules (iwopd_kit/run/gates.py) on constructed rows whose answers are worked out by hand.

Six rows; Δ = trainer − rollout log-prob per counted token, rollout probability 0.1 (row 5: 0.5):

    row 0: Δ = [0, 0]        adv [+1, +1]   reward 1  group A
    row 1: Δ = [1, 0, 0]     adv [-1, -1, -1] reward 0  group A
    row 2: Δ = [-1]          adv [0]        reward 1  group B
    row 3: Δ = [2, 0.5]      adv [+1, -1]   reward 1  group B
    row 4: no counted token (loss mask off) reward 0  group A
    row 5: Δ = [-2]          adv [0]        reward 0  group B   (rollout probability 0.5)

Per row: mean exp|Δ| = 1, (e + 2)/3 = 1.573, e = 2.718, (e² + e^0.5)/2 = 4.52, -, e² = 7.39;
exp(Σ Δ) = 1, e, 1/e, e^2.5 = 12.2, -, e^-2; p_train − p_roll on row 3 token 0 = 0.739 − 0.1, row 5 = 0.068 − 0.5.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import iwopd_kit as K
from iwopd_kit.cli import main
from iwopd_kit.run import scan_run
from iwopd_kit.run.gates import RULES, GateInputs, evaluate, parse_rs_thresholds
from iwopd_kit.run.gates_io import simulate_gates

DELTAS = [[0.0, 0.0], [1.0, 0.0, 0.0], [-1.0], [2.0, 0.5], [0.0], [-2.0]]
ADV = [[1.0, 1.0], [-1.0, -1.0, -1.0], [0.0], [1.0, -1.0], [0.0], [0.0]]
REWARD = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
GROUPS = ["A", "A", "B", "B", "A", "B"]
P_ROLL = [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]


def inputs() -> GateInputs:
    seq, tr, ro, adv = [], [], [], []
    for b, (ds, advs) in enumerate(zip(DELTAS, ADV)):
        if b == 4:
            continue                                     # no counted token
        for d, a in zip(ds, advs):
            seq.append(b)
            ro.append(math.log(P_ROLL[b]))
            tr.append(math.log(P_ROLL[b]) + d)
            adv.append(a)
    return GateInputs(np.array(seq), np.array(tr), np.array(ro), 6, GROUPS, np.array(REWARD), np.array(adv))


# rule -> (params, tokens masked, sequences masked); 9 counted tokens in 5 sequences
EXPECTED = {
    "nemo_seq_error": ({}, 4, 3),                        # rows 2, 3, 5 (errors 2.72, 4.52, 7.39 > 2)
    "tis": ({}, 2, 2),                                   # ρ = e (row 1), e² (row 3) > 2
    "tis5": ({}, 1, 1),                                  # e² > 5
    "icepop": ({}, 3, 3),                                # ρ = 1/e, e², e^-2 outside [0.5, 5]
    "trl_seq_mask": ({}, 2, 1),                          # e^2.5 > 3
    "dppo": ({}, 2, 2),                                  # row 3 token 0 (adv > 0, +0.64), row 5 (adv 0: low side, −0.43)
    "verl_rs": ({}, 7, 4),                               # mean k3 > 0.01 on every row with Δ != 0
    "verl_rs_geo": ({}, 7, 4),                           # mean(−Δ) outside [log 0.999, log 1.001]
}
OVERRIDES = {
    ("nemo_seq_error", (("threshold", 1.5),)): (7, 4),   # row 1 (1.573) too
    ("trl_seq_mask", (("min", 0.5),)): (4, 3),           # rows 2 (1/e) and 5 (e^-2) below 0.5
    ("dppo", (("high", 0.7),)): (1, 1),                  # 0.64 no longer above
    ("verl_rs", (("option", "token_k1"), ("threshold", "0.5_2.0"))): (4, 4),    # |Δ| > log 2
    ("verl_rs", (("option", "seq_max_k2"), ("threshold", 0.4))): (7, 4),        # max Δ²/2 = 0.5, 0.5, 2, 2
    ("verl_rs", (("option", "token_k1,seq_max_k2"), ("threshold", "0.5_2.0,0.6"))): (5, 4),
    ("icepop", (("min", 0.3),)): (2, 2),                 # 1/e = 0.37 kept now
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_rule_masks_what_its_definition_says(name):
    params, tokens, seqs = EXPECTED[name]
    st = evaluate(inputs(), RULES[name], RULES[name].params(params))[None]
    assert (st.tokens, st.seqs) == (9, 5)
    assert (st.tokens_masked, st.seqs_masked) == (tokens, seqs)
    assert st.record()["token_fraction"] == pytest.approx(tokens / 9)
    assert st.record()["seq_fraction"] == pytest.approx(seqs / 5)


@pytest.mark.parametrize("key", list(OVERRIDES), ids=[f"{k[0]}-{'-'.join(str(v) for _, v in k[1])}" for k in OVERRIDES])
def test_parameters_override(key):
    name, params = key
    st = evaluate(inputs(), RULES[name], RULES[name].params(dict(params)))[None]
    assert (st.tokens_masked, st.seqs_masked) == OVERRIDES[key]


def test_reward_of_what_a_rule_masks_and_the_split_by_group():
    out = evaluate(inputs(), RULES["nemo_seq_error"], RULES["nemo_seq_error"].params(), by_group=True)
    rec = out[None].record()
    assert rec["masked_reward_mean"] == pytest.approx(2 / 3) and rec["masked_correct"] == pytest.approx(2 / 3)
    assert rec["kept_reward_mean"] == pytest.approx(0.5)            # rows 0 and 1
    assert (out["A"].seqs, out["A"].seqs_masked, out["B"].seqs, out["B"].seqs_masked) == (2, 0, 3, 3)
    assert out["B"].record()["token_fraction"] == 1.0


def test_bad_parameters_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="no parameter"):
        RULES["icepop"].params({"cap": 3})
    with pytest.raises(ValueError, match="one value or one per option"):
        parse_rs_thresholds(["token_k1", "seq_mean_k3"], "0.5_2,0.1,3")
    with pytest.raises(ValueError, match="one positive upper bound"):
        parse_rs_thresholds(["seq_mean_k3"], "0.1_2")
    assert parse_rs_thresholds(["token_k1"], 2.0) == {"token_k1": (0.5, 2.0)}     # verl: lower = 1 / upper
    with pytest.raises(ValueError, match="expected some of"):
        evaluate(inputs(), RULES["verl_rs"], RULES["verl_rs"].params({"option": "seq_max_k1"}))


def _dump(path):
    """The same six rows as the kit's JSONL (row 4's only token is outside the loss mask)."""
    ro = [[math.log(P_ROLL[b])] * len(ds) for b, ds in enumerate(DELTAS)]
    tr = [[r + d for r, d in zip(rs, ds)] for rs, ds in zip(ro, DELTAS)]
    batch = K.Batch(prompt_ids=[[1]] * 6, completion_ids=[[5] * len(ds) for ds in DELTAS], rollout_logprobs=ro,
                    student_logprobs=tr, mask=[[True] * len(ds) if b != 4 else [False] for b, ds in enumerate(DELTAS)],
                    weights={"advantages": ADV}, groups=GROUPS, meta=[{"reward": r} for r in REWARD])
    return K.write_jsonl(batch, path)


def test_a_dump_and_its_scanned_store_give_the_same_answers(tmp_path):
    path = _dump(tmp_path / "run" / "rollouts_step_7.jsonl")
    recs = {r["rule"]: r for r in simulate_gates(path)}
    for name, (_, tokens, seqs) in EXPECTED.items():
        assert (recs[name]["step"], recs[name]["tokens_masked"], recs[name]["seqs_masked"]) == (7, tokens, seqs), name
    scan_run(tmp_path / "run", workers=1, progress=False, html=False)
    stored = {r["rule"]: r for r in simulate_gates(tmp_path / "run" / "iwopd_scan")}
    assert {k: {c: v for c, v in r.items()} for k, r in stored.items()} == recs


def test_gates_cli_json_and_notes(tmp_path, capsys):
    path = _dump(tmp_path / "d.jsonl")
    assert main(["gates", str(path), "--rules", "icepop,trl_seq_mask", "--param", "trl_seq_mask.min=0.5", "--json"]) == 0
    got = {r["rule"]: r for r in json.loads(capsys.readouterr().out)}
    assert (got["icepop"]["tokens_masked"], got["trl_seq_mask"]["seqs_masked"]) == (3, 3)
    assert json.loads(got["trl_seq_mask"]["params"]) == {"max": 3.0, "min": 0.5}
    no_adv = tmp_path / "n.jsonl"
    K.write_jsonl(K.read_jsonl(path).replace(weights=None), no_adv)
    assert main(["gates", str(no_adv), "--rules", "dppo"]) == 0
    assert "needs the RL advantage" in capsys.readouterr().out
    assert main(["gates", str(path), "--param", "icepop=3"]) == 2
    assert "RULE.KEY=VALUE" in capsys.readouterr().err


def test_dppo_replay_equals_the_mask_prime_rl_exported():
    """prime-rl's export carries its own DPPO decision per token (``is_masked``, token_export.py L190-197); the
    fixtures are written by prime-rl's code path (scripts/primerl_writer.py): on every loss-masked token with both
    log-probs, the replay masks exactly those tokens."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "primerl"
    checked = masked = 0
    for f in sorted(root.glob("*/token_exports/step_*/rank_*.jsonl")):
        seq, tr, ro, adv, want = [], [], [], [], []
        recs = [json.loads(line) for line in f.read_text().splitlines()]
        for b, rec in enumerate(recs):
            if rec["is_masked"] is None or rec["is_masked"][0] is None:
                continue                                   # no rl / ref_kl token in its micro batch: no mask
            for t, lm in enumerate(rec["loss_mask"]):
                i, s = rec["inference_logprobs"][t], rec["trainer_logprobs"][t]
                if lm and i is not None and s is not None:
                    seq.append(b), tr.append(s), ro.append(i), adv.append(rec["advantages"][t])
                    want.append(bool(rec["is_masked"][t]))
        if not seq:
            continue
        x = GateInputs(np.array(seq), np.array(tr), np.array(ro), len(recs), [None] * len(recs),
                       np.full(len(recs), np.nan), np.array(adv))
        got = RULES["dppo"].apply(x, RULES["dppo"].params())
        assert got.tolist() == want, f
        checked += len(want)
        masked += sum(want)
    assert checked > 100 and masked >= 1                 # some tokens, and at least one the mask drops
