"""Write tests/fixtures/tokenizer/cases.json: CLIP token ids from Hugging Face's CLIPTokenizerFast.

Run from the repository root with the reference venv:
    /work/venv/ref/bin/python scripts/make_tokenizer_fixture.py

Reference: CLIPTokenizerFast loaded from onnx/tiny-sd15-int64/tokenizer (tokenizer.json), called with
padding="max_length", max_length=77, truncation=True, exactly as diffusers' StableDiffusionPipeline
calls it. The same prompts are also run through CLIPTokenizerFast built from vocab.json + merges.txt
(onnx/tiny-sd15/tokenizer); the script refuses to write the fixture if the two disagree.

"Slow" comparison (information only): transformers 5 no longer has a Python (slow) CLIPTokenizer, so
`slow_ids` re-implements transformers 4's slow CLIPTokenizer: split on the literal special tokens,
ftfy.fix_text, collapse whitespace, strip, lowercase, CLIP's regex (IGNORECASE), byte-to-unicode,
BPE (open_clip's SimpleTokenizer.bpe, the original CLIP code). `open_clip_agrees` compares against
open_clip's own SimpleTokenizer (which additionally html-unescapes and truncates by forcing EOS at
position 76) with its padding 0 replaced by 49407.
"""
import json
import unicodedata
from pathlib import Path

import ftfy
import regex as re
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTokenizerFast

MAX_LENGTH = 77
BOS, EOS = 49406, 49407
FAST_DIR = Path("onnx/tiny-sd15-int64/tokenizer")  # tokenizer.json
VOCAB_DIR = Path("onnx/tiny-sd15/tokenizer")  # vocab.json + merges.txt only
OUT = Path("tests/fixtures/tokenizer/cases.json")


def base_prompts():
    """(name, prompt) pairs; names make test failures readable."""
    return [
        ("known_cat", "a photo of a cat"),
        ("plain", "a beautiful landscape painting of mountains at sunset, highly detailed"),
        ("mixed_case", "A Photo Of An ASTRONAUT Riding A HoRsE On MaRs"),
        ("accents", "café naïve Ærø façade jalapeño Zürich"),
        ("accents_nfd", unicodedata.normalize("NFD", "café naïve Ærø")),  # NFC normalizer must recompose
        ("special_lowercase", "İstanbul STRASSE straße ΣΊΣΥΦΟΣ ǅemal"),
        ("japanese", "日本語のテキスト、東京の夜景"),
        ("russian", "русский текст: кошка на крыше"),
        ("arabic", "العربية قطة جميلة"),
        ("hindi_thai_marks", "हिन्दी भाषा และภาษาไทย"),
        ("emoji", "a cat 🐱 riding a rocket 🚀 to the moon 🌕"),
        ("emoji_zwj", "family 👨‍👩‍👧‍👦 and rainbow flag 🏳️‍🌈 and 👍🏽 skin tone"),
        ("apostrophes", "it's the cat's toy, don't, we're, they've, I'm, we'll, he'd"),
        ("apostrophes_upper", "IT'S THE CAT'S TOY, DON'T, WE'RE, THEY'VE, I'M, WE'LL, HE'D"),
        ("curly_apostrophes", "it’s the cat’s toy, don’t ‘quoted’ “double”"),
        ("numbers", "1234 apples, 3.14 pies, 1,000 birds, 2024-01-01, 0.5x"),
        ("punctuation_runs", "wow!!! really??? ...ok --- ;;; ()[]{} <> @#$%^&*"),
        ("extra_whitespace", "  a   photo    of  a   cat  "),
        ("tabs_newlines", "a photo\tof a\n\ncat\r\n on\x0ba\x0cmat"),
        ("unicode_spaces", "a\u00a0photo\u3000of\u2028a\u0085cat\u200bon\u2003mat\ufeff"),
        ("empty", ""),
        ("lone_space", " "),
        ("only_whitespace", " \t\n "),
        ("weights_syntax", "(masterpiece:1.2), [bad hands], {best quality}, ((ultra detailed))"),
        ("endoftext_literal", "a photo<|endoftext|> of a cat"),
        ("startoftext_literal", "<|startoftext|>a photo of a cat<|endoftext|>"),
        ("endoftext_uppercase", "a photo <|ENDOFTEXT|> of a cat"),
        ("endoftext_spaced", "a photo < |endoftext| > of a cat"),
        ("html_entities", "cats &amp; dogs &lt;3 &#39;hi&#39;"),
        ("mojibake", "cafÃ© naÃ¯ve"),  # ftfy repairs this in the slow path, the fast one does not
        ("long_word", "supercalifragilisticexpialidocious antidisestablishmentarianism"),
        ("url_like", "https://example.com/path?x=1&y=2 #hashtag @user"),
        ("control_chars", "a\x00photo\x07of\x1ca\x1fcat"),
    ]


def exact_length_prompt(fast, content_tokens):
    """A natural-looking prompt of exactly `content_tokens` BPE tokens (without BOS/EOS)."""
    words = "a highly detailed photo of a red cat sitting on a wooden table near the window".split()
    out = []
    i = 0
    while True:
        n = len(fast(" ".join(out)).input_ids) - 2
        if n == content_tokens:
            return " ".join(out)
        assert n < content_tokens, (n, content_tokens)
        out.append(words[i % len(words)])
        i += 1


def long_prompts():
    return [
        ("long_words_100", " ".join(["cat"] * 100)),
        ("long_sentence", ", ".join(["a beautiful oil painting of a majestic castle on a hill"] * 8)),
        ("long_punct", "!?" * 60 + " end"),
        ("long_mixed_scripts", " ".join(["café 日本 русский 🐱 1,000 it's"] * 15)),
        # Truncation boundary inside a multi-token word: the 76th content token is mid-word.
        ("long_cut_midword", " ".join(["cat"] * 74) + " supercalifragilisticexpialidocious"),
    ]


def fast_encode(tok, text):
    padded = tok(text, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
    full = tok(text).input_ids  # untruncated, with BOS/EOS
    return padded, len(full)


class SlowV4:
    """transformers 4's slow CLIPTokenizer (ftfy path), rebuilt from its published algorithm."""

    SPECIALS = ("<|startoftext|>", "<|endoftext|>")

    def __init__(self, vocab):
        self.vocab = vocab
        self.st = SimpleTokenizer()  # only for its byte encoder and bpe(); ranks = merges.txt
        for s in self.SPECIALS:
            self.st.cache[s] = s
        self.pat = re.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            re.IGNORECASE,
        )

    def _tokenize(self, text):
        text = re.sub(r"\s+", " ", ftfy.fix_text(text)).strip().lower()
        ids = []
        for piece in re.findall(self.pat, text):
            piece = "".join(self.st.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[t] for t in self.st.bpe(piece).split(" "))
        return ids

    def __call__(self, text):
        # The slow tokenizer first splits on added (special) tokens, matched literally.
        parts = re.split(r"(<\|startoftext\|>|<\|endoftext\|>)", text)
        ids = []
        for p in parts:
            ids.extend([self.vocab[p]] if p in self.SPECIALS else self._tokenize(p))
        full = [BOS] + ids + [EOS]
        ids = [BOS] + ids[: MAX_LENGTH - 2] + [EOS]
        return ids + [EOS] * (MAX_LENGTH - len(ids)), len(full)


def open_clip_ids(st, text):
    ids = st(text, context_length=MAX_LENGTH)[0].tolist()
    n = max(i for i, t in enumerate(ids) if t != 0) + 1
    return ids[:n] + [EOS] * (MAX_LENGTH - n)


def main():
    fast = CLIPTokenizerFast.from_pretrained(str(FAST_DIR))
    fast_vm = CLIPTokenizerFast.from_pretrained(str(VOCAB_DIR))
    assert (FAST_DIR / "tokenizer.json").exists() and not (VOCAB_DIR / "tokenizer.json").exists()
    vocab = json.loads((VOCAB_DIR / "vocab.json").read_text(encoding="utf-8"))
    slow = SlowV4(vocab)
    oc = SimpleTokenizer()

    prompts = base_prompts()
    prompts += [
        ("exact_74_tokens", exact_length_prompt(fast, 74)),
        ("exact_75_tokens", exact_length_prompt(fast, 75)),
        ("exact_76_tokens", exact_length_prompt(fast, 76)),
    ]
    prompts += long_prompts()
    names = [n for n, _ in prompts]
    assert len(names) == len(set(names)), "duplicate case names"

    cases = []
    for name, text in prompts:
        ids, full_len = fast_encode(fast, text)
        ids_vm, full_len_vm = fast_encode(fast_vm, text)
        assert (ids, full_len) == (ids_vm, full_len_vm), f"{name}: tokenizer.json and vocab+merges disagree"
        assert len(ids) == MAX_LENGTH and ids[0] == BOS, name
        truncated = full_len > MAX_LENGTH
        if truncated:
            assert ids[-1] == EOS, name
        slow_ids, slow_len = slow(text)
        cases.append({
            "name": name,
            "prompt": text,
            "ids": ids,
            "untruncated_len": full_len,
            "truncated": truncated,
            "slow_agrees": slow_ids == ids and slow_len == full_len,
            "slow_ids": None if slow_ids == ids else slow_ids,
            "open_clip_agrees": open_clip_ids(oc, text) == ids,
        })

    for n, want in (("exact_75_tokens", 77), ("exact_76_tokens", 78)):
        c = next(c for c in cases if c["name"] == n)
        assert c["untruncated_len"] == want, (n, c["untruncated_len"])
    cat = next(c for c in cases if c["name"] == "known_cat")
    assert cat["ids"][:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 49407]

    import tokenizers
    import transformers

    doc = {
        "generator": "scripts/make_tokenizer_fixture.py",
        "reference": f"transformers {transformers.__version__} CLIPTokenizerFast (tokenizers {tokenizers.__version__})"
                     f" from {FAST_DIR}, padding=max_length, max_length={MAX_LENGTH}, truncation=True",
        "slow_reference": f"transformers-4-style slow CLIPTokenizer with ftfy {ftfy.__version__} (see script docstring)",
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    dis = [c["name"] for c in cases if not c["slow_agrees"]]
    dis_oc = [c["name"] for c in cases if not c["open_clip_agrees"]]
    print(f"{len(cases)} cases -> {OUT}")
    print(f"slow (v4-style, ftfy) disagrees on {len(dis)}: {dis}")
    print(f"open_clip SimpleTokenizer disagrees on {len(dis_oc)}: {dis_oc}")


if __name__ == "__main__":
    main()
