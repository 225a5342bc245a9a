"""Write SD1.5's CLIP tokenizer files (vocab.json, merges.txt, configs) from open_clip's BPE file.

SD1.5 uses openai/clip-vit-large-patch14's vocabulary. Hugging Face is out of reach here, but the
same BPE merges ship inside the PyPI package `open_clip_torch`; the vocabulary is derived from the
merges exactly as CLIP's own `SimpleTokenizer` does (256 bytes, 256 `</w>` bytes, 48894 merges,
2 specials = 49408 ids).

usage: python scripts/clip_tokenizer_files.py OUT_DIR [--tokenizer-json]
"""
import argparse
import gzip
import json
import os
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP keeps merges[1 : 48894 + 1] after the header line


def bytes_to_unicode():
    """GPT-2/CLIP byte → printable unicode map (the order defines the first 256 ids)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_merges():
    import open_clip.tokenizer as oct

    path = Path(oct.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]


def clip_vocab(merges):
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}


def write_clip_tokenizer(out_dir, tokenizer_json=False):
    """Write the slow-tokenizer files (as diffusers' convert script ships them); optionally tokenizer.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    vocab = clip_vocab(merges)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = dict(special, model_max_length=77, do_lower_case=True, errors="replace",
                  tokenizer_class="CLIPTokenizer", add_prefix_space=False)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer_json:
        from transformers import CLIPTokenizerFast

        # transformers 5 ignores vocab_file=/merges_file= keyword arguments (its __init__ takes
        # vocab=/merges=) and silently builds an empty BPE; from_pretrained reads the files we
        # just wrote, so it yields the full 49408-id tokenizer.
        fast = CLIPTokenizerFast.from_pretrained(str(out))
        fast.backend_tokenizer.save(str(out / "tokenizer.json"))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--tokenizer-json", action="store_true", help="also write tokenizer.json (optimum style)")
    a = p.parse_args()
    print(write_clip_tokenizer(a.out_dir, a.tokenizer_json))
