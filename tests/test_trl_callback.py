"""The live TRL integration: IWOPDTrainer (trl 1.16.0) runs a few steps on the tiny models on CPU
(transformers generation) from a prompt-only dataset (pure on-policy, lmbda 1) with
IWOPDCheckCallback attached.

The captured batches must convert, check clean, and reproduce TRL's own logged ``iw_opd/mean_weight``
from the kit's advantage and prefix weights; the dumps must be readable by the CLI. Two broken runs
must be caught live: TRL's own normalisation with prompt-only data (``num_items_in_batch`` counted
from the prompt-only labels before generation, i.e. 0: class K), and a trainer that feeds its loss
misaligned rollout log-probs (TRL's reviewed bug 1, class A).
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

trl = pytest.importorskip("trl", reason="the TRL extra is not installed (pip install 'iwopd_kit[trl]')")

from iwopd_kit import check_alignment, load_any, toy  # noqa: E402
from iwopd_kit.cli import main as cli_main  # noqa: E402
from iwopd_kit.formats.trl import trl_prefix_fix_slice  # noqa: E402
from iwopd_kit.integrations.trl import IWOPDCheckCallback  # noqa: E402
from iwopd_kit.engines.scoring import load_model, load_tokenizer  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")           # TRL warns that vLLM 0.32 is newer than it tested; unused here
    from trl.experimental.iw_opd import IWOPDConfig, IWOPDTrainer  # noqa: E402

from datasets import Dataset  # noqa: E402

STEPS = 3
PROMPTS = toy.load_prompts(toy.TRAIN_PROMPTS)[: 8 * STEPS]


def _tokenizer():
    tok = load_tokenizer(toy.STUDENT_DIR)
    # TRL's collator formats prompts with the chat template; the toy prompt is the text itself after <s>
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tok


def _trainer(tmp_path, trainer_cls=IWOPDTrainer, steps=STEPS, count_items=False):
    torch.manual_seed(0)
    args = IWOPDConfig(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-4,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        max_length=64, max_completion_length=48, temperature=1.0, top_p=1.0, top_k=0, lmbda=1.0,
        iw_opd_gamma=0.5, dataloader_num_workers=0,
    )
    data = Dataset.from_list([{"messages": [{"role": "user", "content": p}]} for p in PROMPTS[: 8 * steps]])
    trainer = trainer_cls(model=load_model(toy.STUDENT_DIR).train(), teacher_model=load_model(toy.TEACHER_DIR),
                          args=args, train_dataset=data, processing_class=_tokenizer())
    if not count_items:
        # transformers counts num_items_in_batch from the dataloader's labels, which are all -100 for
        # prompt-only data (the completions are generated later): TRL would divide its loss by 0.
        # Without loss kwargs the trainer gets None and TRL takes the mean over the generated tokens.
        trainer.model_accepts_loss_kwargs = False
    return trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trl")
    trainer = _trainer(tmp)
    checker = IWOPDCheckCallback(every=1, run_dir=tmp / "dumps").attach(trainer)
    sparse = IWOPDCheckCallback(every=2, check=False).attach(trainer)     # a second one, on the same trainer
    trainer.train()
    logged = {h["step"]: h for h in trainer.state.log_history if "iw_opd/mean_weight" in h}
    trainer.sparse = sparse
    return trainer, checker, logged, tmp


def test_every_step_is_captured_and_logged(run):
    trainer, checker, logged, _ = run
    assert [c.step for c in checker.captures] == list(range(1, STEPS + 1))
    assert [c.step for c in trainer.sparse.captures] == [1, 3]                  # every=2: steps 1, 3, ...
    assert all(c.report is None and c.path is None for c in trainer.sparse.captures)
    assert trainer.sparse.captures[1].batch.completion_ids == checker.captures[2].batch.completion_ids
    assert sorted(logged) == list(range(1, STEPS + 1))
    for step, h in logged.items():
        assert h["iwopd_kit/errors"] == 0, (step, checker.captures[step - 1].report)
        assert "iwopd_kit/warnings" in h


def test_captured_batch_checks_clean(run):
    _, checker, _, _ = run
    for cap in checker.captures:
        assert cap.report is not None and cap.report.ok, cap.report
        assert not [f for f in cap.report.findings if f.severity != "info"], cap.report
        b = cap.batch
        assert b.size == 8 and b.has("teacher_logprobs") and b.has("student_logprobs")
        assert b.sampling.engine == "transformers" and b.meta[0]["rollout_source"] == "trainer_student"
        # the student really generated these: every row ends in EOS or ran to the length limit
        assert all(c[-1] == toy.EOS_ID or len(c) == 48 for c in b.completion_ids)


def test_kit_weights_reproduce_trl_mean_weight(run):
    _, checker, logged, _ = run
    for cap in checker.captures:
        h = logged[cap.step]
        for key in ("iw_opd/mean_weight", "iw_opd/min_weight", "iw_opd/max_weight", "iw_opd/mean_abs_advantage"):
            assert math.isclose(cap.metrics[key], h[key], rel_tol=1e-5, abs_tol=1e-6), (cap.step, key, cap.metrics, h)
        assert 1.0 <= h["iw_opd/min_weight"] < h["iw_opd/mean_weight"] < h["iw_opd/max_weight"] <= 1.5


def test_dumps_load_and_cli_checks_them(run, capsys):
    _, checker, _, tmp = run
    cap = checker.captures[0]
    assert cap.path.exists() and cap.path.name == "step000001_mb0.pt"
    loaded = load_any(cap.path)
    assert loaded.completion_ids == cap.batch.completion_ids
    assert loaded.prompt_ids == cap.batch.prompt_ids
    assert loaded.sampling == cap.batch.sampling and loaded.scoring == cap.batch.scoring
    torch.testing.assert_close(loaded.series("teacher_logprobs"), cap.batch.series("teacher_logprobs"), equal_nan=True)
    assert check_alignment(loaded).ok
    out = tmp / "findings.json"
    assert cli_main(["check", str(cap.path), "--json", str(out)]) == 0
    assert all(f["severity"] != "error" for f in json.loads(out.read_text())["findings"])


def test_run_dir_is_a_run_that_scan_reads(run, tmp_path):
    """run_dir's dumps are the TRL-callback layout: scan finds every captured step, and its per-step metrics
    are the ones check gives each dump."""
    import pyarrow.parquet as pq

    from iwopd_kit import check_dump, scan_run

    _, checker, _, tmp = run
    store = tmp_path / "store"
    scan_run(tmp / "dumps", out=store, workers=1)
    steps = pq.read_table(store / "steps.parquet").to_pylist()
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    for s, cap in zip(steps, checker.captures):
        one = check_dump(cap.path)
        assert s["errors"] == 0 and s["policy_tokens"] == int(one.batch.policy_mask().sum())
        assert s["k3_kl"] == pytest.approx(one.metrics["mismatch/k3_kl"], abs=1e-12)
    with pytest.raises(ValueError, match="name the same place"):
        IWOPDCheckCallback(run_dir=tmp_path / "a", dump_dir=tmp_path / "b")


class _PreFixSliceTrainer(IWOPDTrainer):
    """Hands the loss rollout log-probs sliced the way TRL's reviewed bug 1 did (class A)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, attn = inputs["labels"], inputs["attention_mask"]
        with torch.no_grad():
            logits = model(input_ids=inputs["input_ids"], attention_mask=attn).logits
            lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, inputs["input_ids"][:, 1:, None])[..., 0]
        rows = []
        for b in range(labels.shape[0]):
            cols = (labels[b] != -100).nonzero().flatten()
            rows.append(lp[b, cols - 1].tolist())               # per-row completion log-probs, from column 0
        bad = trl_prefix_fix_slice(inputs, rows, pad_value=0.0)   # read back from the shortest prompt's start
        start = self._compute_prompt_length(inputs)
        full = torch.zeros(labels.shape)
        full[:, start:start + bad.shape[1]] = bad[:, : labels.shape[1] - start]
        return super().compute_loss(model, dict(inputs, rollout_logprobs=full), return_outputs, num_items_in_batch)


def test_zero_num_items_is_caught_live(tmp_path):
    trainer = _trainer(tmp_path, steps=1, count_items=True)
    checker = IWOPDCheckCallback(every=1).attach(trainer)
    trainer.train()
    cap = checker.captures[0]
    assert cap.batch.meta[0]["num_items_in_batch"] == 0
    errors = [f for f in cap.report.findings if f.severity == "error"]
    assert [f.kind for f in errors] == ["normalisation"] and "num_items=0" in errors[0].message
    h = next(h for h in trainer.state.log_history if "iwopd_kit/errors" in h)
    assert h["iwopd_kit/errors"] == 1
    assert not math.isfinite(h["on_policy_loss"]) or h["loss"] == 0     # what TRL did with it


def test_misaligned_rollouts_are_caught_live(tmp_path):
    trainer = _trainer(tmp_path, _PreFixSliceTrainer, steps=1)
    checker = IWOPDCheckCallback(every=1).attach(trainer)
    lengths = {len(p) for p in PROMPTS[:8]}
    assert len(lengths) > 1, "the first batch needs mixed prompt lengths for bug 1 to show"
    trainer.train()
    report = checker.captures[0].report
    assert not report.ok and "offset" in report.kinds, report
    logged = [h for h in trainer.state.log_history if "iwopd_kit/errors" in h]
    assert logged and logged[0]["iwopd_kit/errors"] >= 1


def test_attach_refuses_other_trainers():
    with pytest.raises(TypeError, match="IWOPDTrainer"):
        IWOPDCheckCallback().attach(object())
    with pytest.raises(ValueError, match="every"):
        IWOPDCheckCallback(every=0)
    with pytest.raises(ValueError, match="keep"):
        IWOPDCheckCallback(keep=0)
