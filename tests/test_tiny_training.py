"""The training scripts' shared helpers (``research/tiny_training.py``): the schedule, the batch
collation, the model builder (it must rebuild the shipped models' architecture) and exact match."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from iwopd_kit import toy
from iwopd_kit.engines.chat import CHAT_DIR
from research.tiny_training import IGNORE, ModelSpec, collate, exact_match, lr_at, make_model, n_params

SMALL = ModelSpec(hidden=32, layers=2, heads=1, intermediate=64)


# --------------------------------------------------------------------------- #
# lr_at: linear warm-up, then cosine decay to 10% at ``total``, flat after
# --------------------------------------------------------------------------- #
def test_lr_warms_up_linearly_then_decays_by_a_cosine_to_a_tenth():
    base, warmup, total = 2e-3, 20, 220
    assert [lr_at(s, base, warmup, total) for s in range(warmup)] == pytest.approx(
        [base * (s + 1) / warmup for s in range(warmup)])
    assert lr_at(warmup - 1, base, warmup, total) == pytest.approx(base)
    assert lr_at(warmup, base, warmup, total) == pytest.approx(base)          # cosine at progress 0
    assert lr_at(warmup + 100, base, warmup, total) == pytest.approx(0.55 * base)  # half way: 0.1 + 0.45
    quarter = 0.1 + 0.45 * (1 + math.cos(math.pi / 4))
    assert lr_at(warmup + 50, base, warmup, total) == pytest.approx(quarter * base)
    assert lr_at(total, base, warmup, total) == pytest.approx(0.1 * base)
    assert lr_at(total + 500, base, warmup, total) == pytest.approx(0.1 * base)
    decay = [lr_at(s, base, warmup, total) for s in range(warmup, total + 5)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_lr_without_warmup_starts_at_the_base_rate():
    assert lr_at(0, 1.0, 0, 10) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 0, 10) == pytest.approx(0.1)


# --------------------------------------------------------------------------- #
# collate: right padding, labels only on the completion
# --------------------------------------------------------------------------- #
def test_collate_right_pads_and_labels_only_the_completion():
    pairs = [([1, 5, 6], [7, 2]), ([1], [8, 9, 10, 2]), ([1, 3, 3, 3, 3], [2])]
    batch = collate(pairs, pad_id=0)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    for tensor in batch.values():
        assert tensor.shape == (3, 6) and tensor.dtype == torch.int64
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2, 0], [1, 8, 9, 10, 2, 0], [1, 3, 3, 3, 3, 2]]
    assert batch["labels"].tolist() == [[IGNORE] * 3 + [7, 2, IGNORE], [IGNORE, 8, 9, 10, 2, IGNORE],
                                        [IGNORE] * 5 + [2]]
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0], [1] * 5 + [0], [1] * 6]


def test_collate_pads_with_the_given_id_and_refuses_an_empty_batch():
    batch = collate([([4], [5]), ([4, 4, 4], [5])], pad_id=7)
    assert batch["input_ids"][0].tolist() == [4, 5, 7, 7]
    assert batch["labels"][0].tolist() == [IGNORE, 5, IGNORE, IGNORE]
    with pytest.raises(ValueError, match="no examples"):
        collate([])


# --------------------------------------------------------------------------- #
# make_model: seeded, and the shipped models' architecture
# --------------------------------------------------------------------------- #
def _weights(seed: int, **kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return make_model(SMALL, **kw).state_dict()


def test_the_same_seed_builds_the_same_weights():
    a, b, c = _weights(3), _weights(3), _weights(4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"])


def test_toy_defaults_and_the_tied_chat_variant():
    toy_model = make_model(SMALL)
    cfg = toy_model.config
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.head_dim) == (len(toy.VOCAB), 64, 32)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (toy.BOS_ID, toy.EOS_ID, toy.PAD_ID)
    assert not cfg.tie_word_embeddings
    assert toy_model.lm_head.weight.data_ptr() != toy_model.model.embed_tokens.weight.data_ptr()
    chat = make_model(SMALL, 40, max_positions=128, tie_embeddings=True, bos_id=None, eos_id=3, pad_id=4)
    assert chat.config.bos_token_id is None and chat.config.max_position_embeddings == 128
    assert chat.lm_head.weight.data_ptr() == chat.model.embed_tokens.weight.data_ptr()
    assert n_params(chat) == n_params(toy_model) - 2 * 32 * len(toy.VOCAB) + 32 * 40


def test_a_spec_whose_hidden_is_not_heads_times_32_is_refused():
    with pytest.raises(ValueError, match="hidden must be heads"):
        make_model(ModelSpec(hidden=48, layers=1, heads=1, intermediate=64))


def _shipped_shapes(folder) -> dict[str, tuple[int, ...]]:
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_the_builder_rebuilds_the_shipped_toy_models(name):
    report = json.loads((toy.DATA_DIR / "models" / "training_report.json").read_text())
    model = make_model(ModelSpec(**report[name]["spec"]))
    assert n_params(model) == report[name]["params"]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == _shipped_shapes(toy.DATA_DIR / "models" / name)


def test_the_builder_rebuilds_the_shipped_chat_student():
    report = json.loads((CHAT_DIR / "training_report.json").read_text())
    shipped = json.loads((CHAT_DIR / "student" / "config.json").read_text())
    model = make_model(ModelSpec(**report["student"]["spec"]), report["vocab_padded"], max_positions=128,
                       tie_embeddings=True, bos_id=None, eos_id=shipped["eos_token_id"],
                       pad_id=shipped["pad_token_id"])
    assert n_params(model) == report["student"]["params"]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
                "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(model.config, key) == shipped[key], key
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert shapes == _shipped_shapes(CHAT_DIR / "student")


# --------------------------------------------------------------------------- #
# exact_match: left padding, cut at EOS, RNG and mode left as they were
# --------------------------------------------------------------------------- #
class ScriptedModel(torch.nn.Module):
    """Answers ``generate`` with fixed rows after the prompt, and records what it was given."""

    def __init__(self, rows: list[list[int]]):
        super().__init__()
        self.rows, self.calls = rows, []

    def generate(self, input_ids, attention_mask, **kw):
        self.calls.append((input_ids.tolist(), attention_mask.tolist(), kw, self.training))
        torch.rand(1)   # draws from the global RNG, as sampling does
        new = torch.tensor(self.rows[:len(input_ids)])
        del self.rows[:len(input_ids)]
        return torch.cat([input_ids, new], dim=1)


def test_exact_match_cuts_at_eos_and_counts_an_unended_row_only_when_allowed():
    eos, pad = 2, 0
    rows = [[5, 6, eos, pad], [5, 6, 7, 8], [9, eos, pad, pad]]
    right = lambda k, ids: ids == [[5, 6], [5, 6, 7, 8], [9]][k]  # noqa: E731
    seen = []
    judge = lambda k, ids: seen.append((k, ids)) or right(k, ids)  # noqa: E731
    model = ScriptedModel([list(r) for r in rows])
    assert exact_match(model, [[1, 3], [1], [1, 3, 3]], judge, 0.0, eos_id=eos, pad_id=pad) == pytest.approx(2 / 3)
    assert seen == [(0, [5, 6]), (2, [9])]
    ids, mask, kw, training = model.calls[0]
    assert ids == [[0, 1, 3], [0, 0, 1], [1, 3, 3]] and mask == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]
    assert kw["do_sample"] is False and (kw["eos_token_id"], kw["pad_token_id"]) == (eos, pad)
    assert training is False
    model = ScriptedModel([list(r) for r in rows])
    assert exact_match(model, [[1, 3], [1], [1, 3, 3]], right, 1.0, eos_id=eos, pad_id=pad,
                       eos_required=False, batch_size=2) == pytest.approx(1.0)
    assert [len(call[0]) for call in model.calls] == [2, 1]
    assert model.calls[0][2]["do_sample"] is True and model.calls[0][2]["temperature"] == 1.0


def test_exact_match_leaves_the_global_rng_and_the_mode_as_they_were():
    model = ScriptedModel([[2]] * 4)
    model.train()
    torch.manual_seed(11)
    state = torch.get_rng_state()
    exact_match(model, [[1], [1]], lambda k, ids: True, 1.0, seed=5, eos_id=2, pad_id=0)
    assert torch.equal(torch.get_rng_state(), state) and model.training
    model.eval()
    exact_match(model, [[1], [1]], lambda k, ids: True, 1.0, seed=5, eos_id=2, pad_id=0)
    assert not model.training
    with pytest.raises(ValueError, match="no prompts"):
        exact_match(model, [], lambda k, ids: True, 0.0, eos_id=2, pad_id=0)


def test_exact_match_on_a_real_model_is_deterministic_for_a_seed():
    torch.manual_seed(0)
    model = make_model(SMALL)
    prompts = toy.make_prompts(4, seed=1)
    ids = [[toy.BOS_ID] + [toy.VOCAB.index(c) for c in p] for p in prompts]
    answers = []
    judge = lambda k, row: answers.append(row) or len(row) % 2 == 0  # noqa: E731
    runs = [exact_match(model, ids, judge, 1.0, seed=9, eos_id=toy.EOS_ID, pad_id=toy.PAD_ID,
                        max_new_tokens=8, eos_required=False) for _ in range(2)]
    assert runs[0] == runs[1] and answers[:4] == answers[4:] and len(answers) == 8
