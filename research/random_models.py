"""Random-weight causal LMs at a real vocabulary size, built from a seed (no download).

:func:`build_random_model` writes a complete local model directory (``config.json``,
``model.safetensors``, ``generation_config.json`` and a tokenizer) that transformers, vLLM and the
kit's :func:`~iwopd_kit.engines.scoring.load_model` / :func:`~iwopd_kit.engines.scoring.load_tokenizer` read like any
checkpoint; :func:`random_model_dir` builds it once per spec into a cache directory and returns the
path. The default :class:`RandomModelSpec` is a Qwen3-architecture model at Qwen's vocabulary
(151,936 rows), hidden size 64, 2 layers, tied embeddings: 9.8M parameters, 39 MB in float32,
built in about a second.

Why not plain random init: a random Gaussian embedding matrix gives nearly flat next-token
distributions over 151,936 tokens (at transformers' ``initializer_range`` 0.02 every sampled token
has a log-prob of about -log V = -11.9); scaling the logits up until they are peaked makes a tied
model copy its input token (the token's own embedding dominates the residual stream), and scaling
every row up makes every logit large, so each token's bf16 rounding error exceeds a trained
model's. In trained LMs the output-embedding norms grow with token frequency, so the mass sits on a
small set of likely tokens while the long tail stays low. The spec reproduces that shape with four knobs:

- ``embedding_std`` (0.02): the std of the (tied) embedding before the frequency profile;
- ``zipf_alpha`` (0.5), ``zipf_k0`` (100): the row of the token of (seeded, random) frequency rank r
  is scaled by ``(1 + r / zipf_k0) ** -zipf_alpha``; ids keep no order, so the special tokens are as
  rare as any other id;
- ``initializer_range`` (0.1) for the attention and MLP weights: large enough that the layers'
  output outweighs the input token's embedding (at 0.02 the model repeats a frequent token ~95% of
  the time, at 0.1 about 27% of tokens repeat the one before);
- ``logit_scale`` (60): the weight of the final RMSNorm (1.0 in a fresh model), a global inverse
  temperature of the logits, set so the largest logit is ~35-40 as in real models.

Measured with the defaults (vLLM float32, T=1, 16 prompts x 32 tokens, 3 seeds): sampled-token
log-prob median -0.13 to -0.21 and mean -0.6 to -0.8, ~105 distinct tokens in 512. vLLM bfloat16
against a float32 trainer (docs/calibration.md, 3 x 48 prompts x 32 tokens): per-token |Δ| p50
0.0098, p99 0.23, max 0.55, ``mismatch/token_mult_prob_error`` 1.032 (worst seed 1.033): a long
bf16 tail, inside the field's healthy bound of 1.05.

The tokenizer is a word-level one over synthetic token strings (``<pad>`` 0, ``<s>`` 1, ``</s>`` 2,
``<unk>`` 3, then ``t4`` ... ``t151935``, whitespace-separated), built with the ``tokenizers``
library: it lets vLLM start without ``skip_tokenizer_init`` and detokenize, and gives the kit's
tokenizer checks something real to read. Prompts are token ids (:func:`random_prompts`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

QWEN_VOCAB: int = 151_936
"""Qwen2 / Qwen2.5 / Qwen3's embedding rows (the tokenizer's 151,669 tokens padded to a multiple of 128)."""

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPEC_FILE = "iwopd_random_model.json"
"""Written beside the weights: the spec the directory was built from (the cache's key)."""


@dataclass(frozen=True)
class RandomModelSpec:
    """What :func:`build_random_model` builds; every field goes into the cache key."""

    architecture: str = "qwen3"          # "qwen3" or "llama"
    vocab_size: int = QWEN_VOCAB
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 256
    initializer_range: float = 0.1
    embedding_std: float = 0.02
    zipf_alpha: float = 0.5
    zipf_k0: float = 100.0
    logit_scale: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ("qwen3", "llama"):
            raise ValueError(f"architecture must be 'qwen3' or 'llama', got {self.architecture!r}")
        if self.vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {self.vocab_size}")
        for name in ("initializer_range", "embedding_std", "zipf_k0", "logit_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.zipf_alpha < 0:
            raise ValueError(f"zipf_alpha must be >= 0, got {self.zipf_alpha!r}")

    def key(self) -> str:
        """A short stable hash of the spec (the cache directory's name)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _config(spec: RandomModelSpec):
    common = dict(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                  num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                  num_key_value_heads=spec.num_heads, head_dim=spec.head_dim,
                  max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=True,
                  initializer_range=spec.initializer_range, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                  pad_token_id=PAD_ID)
    if spec.architecture == "qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        return Qwen3ForCausalLM, Qwen3Config(**common)
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM, LlamaConfig(**common)


def zipf_row_scales(spec: RandomModelSpec) -> torch.Tensor:
    """[V] float32: the factor each embedding row is scaled by (``(1 + rank / k0) ** -alpha``, rank seeded)."""
    g = torch.Generator().manual_seed(spec.seed + 1)
    rank = torch.randperm(spec.vocab_size, generator=g).to(torch.float32)
    return (1.0 + rank / spec.zipf_k0) ** (-spec.zipf_alpha)


def random_model(spec: RandomModelSpec = RandomModelSpec()):
    """The transformers model of ``spec`` in float32, eval mode (deterministic in ``spec.seed``)."""
    cls, cfg = _config(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = cls(cfg)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.mul_(spec.embedding_std / spec.initializer_range * zipf_row_scales(spec)[:, None])
        model.model.norm.weight.fill_(spec.logit_scale)
    return model.float().eval()


def random_tokenizer(vocab_size: int):
    """A word-level fast tokenizer with ``vocab_size`` tokens (specials, then ``t4`` ... ``t{V-1}``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update((f"t{i}", i) for i in range(len(SPECIAL_TOKENS), vocab_size))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    pad, bos, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk)


def build_random_model(out_dir: str | Path, spec: RandomModelSpec = RandomModelSpec()) -> Path:
    """Write the model of ``spec`` (safetensors, float32), its tokenizer and the spec to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    model = random_model(spec)
    model.generation_config.do_sample = True           # no greedy default for vLLM to read
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()                 # no "Writing model shards" bar on stderr
    try:
        model.save_pretrained(out, safe_serialization=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    random_tokenizer(spec.vocab_size).save_pretrained(out)
    (out / SPEC_FILE).write_text(json.dumps(dataclasses.asdict(spec), indent=1, sort_keys=True) + "\n")
    return out


def default_cache_dir() -> Path:
    """``$IWOPD_KIT_CACHE/random_models``, else ``$XDG_CACHE_HOME/iwopd_kit/random_models`` (~/.cache)."""
    root = os.environ.get("IWOPD_KIT_CACHE")
    if root:
        return Path(root) / "random_models"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iwopd_kit" / "random_models"


def random_model_dir(spec: RandomModelSpec = RandomModelSpec(), cache_dir: str | Path | None = None) -> Path:
    """The directory of ``spec``'s model under ``cache_dir`` (default :func:`default_cache_dir`), built on
    first use. Built in a temporary directory beside it and renamed into place, so concurrent callers
    never see a half-written model."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"{spec.architecture}-v{spec.vocab_size}-h{spec.hidden_size}-l{spec.num_layers}-{spec.key()}"
    if (target / SPEC_FILE).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=root))
    try:
        build_random_model(tmp, spec)
        try:
            tmp.rename(target)
        except OSError:              # another process got there first
            if not (target / SPEC_FILE).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def random_prompts(n: int, vocab_size: int = QWEN_VOCAB, min_len: int = 4, max_len: int = 12,
                   seed: int = 0) -> list[list[int]]:
    """``n`` prompts of token ids: BOS, then ``min_len - 1`` to ``max_len - 1`` ids drawn uniformly from the
    non-special ids (seeded)."""
    if n < 1 or not 2 <= min_len <= max_len:
        raise ValueError(f"need n >= 1 and 2 <= min_len <= max_len, got n={n}, min_len={min_len}, max_len={max_len}")
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [[BOS_ID] + torch.randint(len(SPECIAL_TOKENS), vocab_size, (k - 1,), generator=g).tolist() for k in lengths]


__all__ = ["QWEN_VOCAB", "RandomModelSpec", "random_model", "random_tokenizer", "build_random_model",
           "random_model_dir", "default_cache_dir", "random_prompts", "zipf_row_scales"]
