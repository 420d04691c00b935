"""The tokenizer inside the graph (`export/quantize --with-tokenizer`): model_with_tokenizer.onnx.

A second graph in the bundle, next to model.onnx (which stays as it is): a WordPiece tokenizer built
from onnxruntime-extensions custom ops (domain `ai.onnx.contrib`) merged in front of the model with
`onnx.compose.merge_models`, so a binding with no tokenizer library (Java, C#, C++, mobile) feeds a
raw string and reads the label. One text per run: input `text`, a string tensor of shape [1], each NUL
(U+0000) in it replaced by U+FFFD first (`graph_text`): onnxruntime hands strings to custom ops as C
strings, so the ops would read the text only up to its first NUL; BertNormalizer deletes both characters.

Outputs (single-sentence text classification, the only task family it is built for):
- `label`: string [1], the label name (labels[label_id]);
- `label_id`: int64 [1], argmax of the logits;
- `scores`: float [1, num_labels], softmax of the logits;
- `logits`: float [1, num_labels], the model's raw output;
- `token_ids`: int64 [1, length], the token ids the model saw (for checking the tokenizer).

The tokenizer is not the extensions' BertTokenizer op: that op keeps the pieces of a word before an
unknown character ("great😀" -> great [UNK], HuggingFace: [UNK]), differs from the HuggingFace
BertNormalizer on control, format, private-use and combining characters, non-ASCII punctuation and
some spaces, and does not truncate sentence pairs. The graph here reproduces the tokenizer.json
pipeline step by step instead:

0. StringRegexReplace (RE2): the added tokens of tokenizer.json ([CLS], [SEP], [UNK], [PAD], [MASK], ...),
   which HuggingFace splits out of the raw text before normalizing it (exact case, leftmost-longest),
   each become a word of one private-use sentinel character, which the later steps keep as it is and
   the id lookup maps to the token's id (`added_tokens`; `[cls]` stays text, as in HuggingFace);
1. StringRegexReplace (RE2): drop what BertNormalizer's clean_text drops (control characters except
   tab/newline/return, format and private-use characters, U+FFFD), turn every Unicode space
   separator into a space, put spaces around CJK ideographs (handle_chinese_chars) and around
   punctuation (ASCII punctuation and Unicode P*, BertPreTokenizer), drop combining marks (Mn) when
   the normalizer strips accents;
   and fold the letters the extensions op does not lower-case or strip (one regex per target letter:
   Latin beyond Latin-1, Greek, Cyrillic; see `letter_folds`);
2. BasicTokenizer: lower-casing and accent stripping of Latin-1 and basic Cyrillic, split on spaces;
3. WordpieceTokenizer, one row per word, max_input_chars_per_word as in tokenizer.json;
4. plain ONNX ops: token strings and sentinels -> ids (ai.onnx.ml LabelEncoder), a word with any
   unknown piece becomes one [UNK] (as HuggingFace does), truncation to max_length - 2, [CLS] ... [SEP], mask and
   token types, the model, softmax, argmax, label lookup.

Where it still differs from the HuggingFace tokenizers library: KNOWN_DIFFERENCES (plus, per bundle, added
tokens with `normalized: true` or `single_word: true`, which BERT's special tokens are not), docs/export.md
and tests/test_with_tokenizer.py (which checks that none of its 1,000 inputs differs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ArtifactError, ConfigError

FILE = "model_with_tokenizer.onnx"
DOMAIN = "ai.onnx.contrib"
OPTION = "--with-tokenizer"
INSTALL_FIX = "pip install 'bertedge[tokenizer]' (onnxruntime-extensions), or drop --with-tokenizer"
OUTPUTS = ("label", "label_id", "scores", "logits", "token_ids")
PREFIX = "tok_"

# BertNormalizer.clean_text: characters removed (NUL, U+FFFD, and "other" except \t \n \r). Cs cannot
# occur in UTF-8; Cn (unassigned) is not expressible in RE2 and is left alone. Private use (Co) is spelled
# out as ranges, so that the added tokens' sentinels (SENTINEL_BASE ...) can be kept out of it.
CLEAN_CLASS = r"\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\p{Cf}\x{FFFD}"
PRIVATE_USE = ((0xE000, 0xF8FF), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD))
# Characters that become a space (clean_text) or split words (BertPreTokenizer): Rust's White_Space.
SPACE_PATTERN = r"[\t\n\r\p{Z}]"
# BertNormalizer._is_chinese_char ranges.
CJK_RANGES = r"\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}" \
             r"\x{2B920}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}"
# BertPreTokenizer's is_bert_punc: ASCII punctuation ranges and Unicode P*.
PUNCT_CLASS = r"!-/:-@\[-`{-~\p{P}"
MARK_PATTERN = r"\p{Mn}"
# Added tokens: the private-use characters from SENTINEL_BASE (plane 16) are OPEN and CLOSE (around each
# match of the added-token pass) and one sentinel per added token. The graph first turns these characters
# in the user's text into U+FFFD, which, like them, cannot be part of a token's text and is deleted by
# clean_text: so only the added-token pass makes sentinels, and the user's ones still vanish as in HF.
SENTINEL_BASE = 0x100000
OPEN, CLOSE = chr(SENTINEL_BASE), chr(SENTINEL_BASE + 1)


def sentinel(i: int) -> str:
    return chr(SENTINEL_BASE + 2 + i)


def re2_literal(text: str) -> str:
    """`text` as an RE2 pattern matching exactly it: every character but [A-Za-z0-9_] as \\x{HEX}."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else f"\\x{{{ord(c):X}}}" for c in text)


def clean_pattern(n_added: int) -> str:
    """CLEAN_CLASS plus private use, less the n_added sentinels (OPEN and CLOSE are gone by then)."""
    ranges = list(PRIVATE_USE)
    if n_added:  # plane 16 less the sentinels
        first, last = SENTINEL_BASE + 2, SENTINEL_BASE + 1 + n_added
        ranges[2:] = [(SENTINEL_BASE, first - 1), (last + 1, PRIVATE_USE[2][1])]
    return "[" + CLEAN_CLASS + "".join(f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in ranges) + "]"


def graph_text(text: str) -> str:
    """`text` as the graph's `text` input takes it: each NUL (and lone surrogate) replaced by U+FFFD.

    onnxruntime hands strings to custom ops as C strings, so the ops would see the text only up to its first
    NUL (the standard ops that could edit it in the graph need opset 20). BertNormalizer's clean_text deletes
    NUL and U+FFFD alike, and the graph reproduces no added token containing either, so the ids are
    HuggingFace's on the original text (deleting the NUL instead would turn '[CL\\0S]' into the token [CLS],
    which HuggingFace does not). Every binding must do this before feeding the graph (docs/export.md)."""
    from .runtime import tokenizable

    return tokenizable(text).replace("\x00", "\ufffd")


# Checked at export/quantize time besides the dev texts.
ODD_TEXTS = ("", " ", "\t\n", "good", "GOOD Film!", "café naïve résumé", "Zażółć gęślą jaźń", "great😀 film 👍🏽",
             "مرحبا good", "שלום film", "中文 good", "İstanbul", "a\u200bb", " ".join(["very good film"] * 200),
             "x" * 300, "[CLS] good [SEP]", "[cls] good[MASK]film", "a\x00b good")

KNOWN_DIFFERENCES = (
    ("letters outside Latin-1, Latin Extended-A/Additional, Greek and Cyrillic whose lower case or accent "
     "folding the extensions op does not know (Armenian, Georgian, fullwidth and circled letters, ...)"),
    ("characters whose decomposition is not a letter plus marks: Hangul syllables (HuggingFace splits them "
     "into jamo when it strips accents), '≠' ('=' + U+0338)"),
    "unassigned code points and characters newer than one library's Unicode tables",
)


# Latin Extended-A, Greek, basic Cyrillic, Latin Extended Additional (Vietnamese): each target letter costs one
# regex node (~20 us a text); the rest of Unicode's cased letters are a documented difference.
FOLD_RANGES = (range(0x100, 0x180), range(0x370, 0x400), range(0x400, 0x460), range(0x1E00, 0x1F00))


def letter_folds(lowercase: bool, strip_accents: bool) -> dict[str, str]:
    """{letter: the characters HuggingFace's BertNormalizer turns into it} that the extensions op does not:
    accented Latin letters beyond Latin-1 ('ą', 'č', 'ş', 'ệ'), Greek (capitals, tonos) and Cyrillic ones
    ('Ё', 'й' with strip_accents). The op lower-cases and folds Latin-1 and basic Cyrillic only."""
    import unicodedata

    if not (lowercase or strip_accents):
        return {}
    folds: dict[str, list[str]] = {}
    for code in [*FOLD_RANGES[0], *FOLD_RANGES[1], *FOLD_RANGES[2], *FOLD_RANGES[3]]:
        ch = chr(code)
        if unicodedata.category(ch) not in ("Lu", "Ll", "Lt") or 0x410 <= code <= 0x42F:
            continue
        base = ch
        if strip_accents:
            base = "".join(c for c in unicodedata.normalize("NFD", ch) if unicodedata.category(c) != "Mn")
        base = base.lower() if lowercase else base
        if base != ch and len(base) == 1:
            folds.setdefault(base, []).append(ch)
    return {k: "".join(v) for k, v in sorted(folds.items())}


def require_extensions():
    """onnxruntime_extensions, or a one-line error naming the option."""
    try:
        import onnxruntime_extensions
    except ImportError:
        raise ConfigError("needs the onnxruntime-extensions package, which is not installed", where=OPTION,
                          fix=INSTALL_FIX) from None
    return onnxruntime_extensions


def session(path: str | Path, threads: int | None = None):
    """An InferenceSession over a model_with_tokenizer.onnx, with the extensions' custom ops registered."""
    import onnxruntime as ort

    ext = require_extensions()
    options = ort.SessionOptions()
    options.register_custom_ops_library(ext.get_library_path())
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess, text: str) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"text": np.array([graph_text(text)], dtype=object)})))


# ----------------------------------------------------------------------------- checks


def tokenizer_settings(bundle_dir: Path, task: str, input_kind: str | None) -> dict:
    """What the graph must reproduce, read from tokenizer.json; refuses what it cannot reproduce."""
    from .tasks import get_task

    if not get_task(task).per_sequence or input_kind == "sentence-pair":
        what = "sentence-pair classification" if input_kind == "sentence-pair" else task
        raise ConfigError(f"builds a tokenizer graph for single-sentence text classification only, not {what}",
                          where=OPTION, fix="Drop --with-tokenizer; tokenize with tokenizer.json and run model.onnx "
                                            "(the manifest's interface says how)")
    path = bundle_dir / "tokenizer.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read tokenizer.json ({exc})", where=str(path), fix="Re-export the bundle") from None
    model, normalizer = spec.get("model") or {}, spec.get("normalizer") or {}
    pre, post = spec.get("pre_tokenizer") or {}, spec.get("post_processor") or {}
    problems = []
    if model.get("type") != "WordPiece":
        problems.append(f"a {model.get('type')} model (not WordPiece)")
    if normalizer.get("type") != "BertNormalizer":
        problems.append(f"a {normalizer.get('type')} normalizer (not BertNormalizer)")
    if pre.get("type") != "BertPreTokenizer":
        problems.append(f"a {pre.get('type')} pre-tokenizer (not BertPreTokenizer)")
    if post.get("type") not in ("TemplateProcessing", "BertProcessing"):
        problems.append(f"a {post.get('type')} post-processor")
    if problems:
        raise ConfigError(f"supports BERT WordPiece tokenizers only; tokenizer.json has {', '.join(problems)}",
                          where=OPTION, fix="Drop --with-tokenizer for this model")
    vocab = model.get("vocab") or {}
    unk = model.get("unk_token", "[UNK]")
    cls, sep = _special(post, "cls", "[CLS]"), _special(post, "sep", "[SEP]")
    for token in (unk, cls, sep):
        if token not in vocab:
            raise ConfigError(f"tokenizer.json's vocabulary has no {token}", where=OPTION,
                              fix="Drop --with-tokenizer for this model")
    lowercase = bool(normalizer.get("lowercase", True))
    strip = normalizer.get("strip_accents")
    added, not_reproduced = added_tokens(path)
    return {"vocab": vocab, "unk_token": unk, "cls_token": cls, "sep_token": sep,
            "added_tokens": added, "added_not_reproduced": not_reproduced,
            "suffix": model.get("continuing_subword_prefix", "##"),
            "max_input_chars_per_word": int(model.get("max_input_chars_per_word", 100)),
            "lowercase": lowercase, "strip_accents": lowercase if strip is None else bool(strip),
            "clean_text": bool(normalizer.get("clean_text", True)),
            "handle_chinese_chars": bool(normalizer.get("handle_chinese_chars", True))}


def added_tokens(path: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """tokenizer.json's added tokens: ([(content, id)] the graph matches in the raw text, [the others]).

    Read through the tokenizers library itself, so the ids and flags are the ones it uses (an added token
    already in the WordPiece vocabulary takes that id, whatever `added_tokens` says).

    HuggingFace (tokenizers' AddedVocabulary) splits added tokens out of the text before the normalizer:
    those with `normalized: false` (BERT's special tokens) by their exact, case-sensitive content in the raw
    text, leftmost-longest; `[cls]` is not `[CLS]` and stays text. `lstrip`/`rstrip` make the token swallow
    the whitespace next to it, which cannot change the ids (whitespace only separates words) and needs no
    step. Not reproduced (listed in known_differences): `normalized: true` tokens, matched in the normalized
    text, `single_word: true` ones, matched only between non-word characters, and (never seen) tokens with
    NUL, U+FFFD or plane-16 private-use characters in them."""
    from tokenizers import Tokenizer

    reserved = range(SENTINEL_BASE, SENTINEL_BASE + 0x10000)  # plane 16
    added, seen, others = [], set(), []
    for token_id, token in sorted(Tokenizer.from_file(str(path)).get_added_tokens_decoder().items()):
        content = token.content
        if not content or content in seen:
            continue
        seen.add(content)
        if token.normalized or token.single_word or any(c in "\x00\ufffd" or ord(c) in reserved for c in content):
            others.append(content)
        else:
            added.append((content, int(token_id)))
    return added, others


def _special(post: dict, which: str, default: str) -> str:
    if post.get("type") == "BertProcessing":
        return (post.get(which) or [default])[0]
    tokens = list((post.get("special_tokens") or {}).keys())
    for token in tokens:
        if which in token.lower():
            return token
    return default


# ----------------------------------------------------------------------------- the graph


def tokenizer_graph(settings: dict, max_length: int, opset: int, model_inputs: list[str]):
    """text [1] (string) -> the model's inputs [1, length] (int64), as a standalone ONNX model."""
    import onnx
    from onnx import TensorProto, helper

    nodes, inits = [], []

    def const(name, values, dtype=TensorProto.INT64, dims=None):
        array = list(values)
        inits.append(helper.make_tensor(PREFIX + name, dtype, [len(array)] if dims is None else dims, array))
        return PREFIX + name

    def node(op, inputs, outputs, domain="", **attrs):
        outs = [PREFIX + o for o in outputs]
        nodes.append(helper.make_node(op, inputs, outs, name=PREFIX + outputs[0], domain=domain, **attrs))
        return outs if len(outs) > 1 else outs[0]

    def regex(src, name, pattern, rewrite):
        pat = const(name + "_pattern", [pattern.encode()], TensorProto.STRING)
        rew = const(name + "_rewrite", [rewrite.encode()], TensorProto.STRING)
        return node("StringRegexReplace", [src, pat, rew], [name], domain=DOMAIN, global_replace=1)

    text = "text"
    added = settings.get("added_tokens") or []
    if added:
        # the user's own OPEN/CLOSE/sentinel characters become U+FFFD (clean_text deletes both); each match,
        # leftmost-longest as HuggingFace's trie (RE2 takes the first alternative: longest first), is
        # wrapped in OPEN ... CLOSE, then each token's wrapped matches become its sentinel between spaces
        last = SENTINEL_BASE + 1 + len(added)
        text = regex(text, "added_reserved", f"[\\x{{{SENTINEL_BASE:X}}}-\\x{{{last:X}}}]", "\ufffd")
        longest_first = sorted(added, key=lambda token: -len(token[0]))
        text = regex(text, "added_match", "(" + "|".join(re2_literal(c) for c, _ in longest_first) + ")",
                     OPEN + "\\1" + CLOSE)
        for i, (content, _) in enumerate(added):
            text = regex(text, f"added_{i}", re2_literal(OPEN + content + CLOSE), f" {sentinel(i)} ")
    if settings["clean_text"]:
        text = regex(text, "clean", clean_pattern(len(added)), "")
    text = regex(text, "spaces", SPACE_PATTERN, " ")
    isolate = PUNCT_CLASS + (CJK_RANGES if settings["handle_chinese_chars"] else "")
    text = regex(text, "isolate", f"([{isolate}])", r" \1 ")
    for i, (target, sources) in enumerate(letter_folds(settings["lowercase"], settings["strip_accents"]).items()):
        text = regex(text, f"fold_{i}", "[" + sources + "]", target)
    if settings["strip_accents"]:
        text = regex(text, "marks", MARK_PATTERN, "")
    words = node("BasicTokenizer", [text], ["words"], domain=DOMAIN, do_lower_case=int(settings["lowercase"]),
                 strip_accents=int(settings["strip_accents"]), tokenize_chinese_chars=0, tokenize_punctuation=0,
                 remove_control_chars=0)
    vocab = settings["vocab"]
    # each sentinel is a one-character word: a piece of its own (any unused id; the lookup below gives its own)
    top = max((int(v) for v in vocab.values()), default=-1)
    wordpiece_vocab = {**vocab, **{sentinel(i): top + 1 + i for i in range(len(added))}}
    no_rows = const("no_rows", [], dims=[0])
    pieces, _, begins, limits = node(
        "WordpieceTokenizer", [words, no_rows], ["pieces", "row_lengths", "begins", "limits"], domain=DOMAIN,
        vocab=json.dumps(wordpiece_vocab, ensure_ascii=False), suffix_indicator=settings["suffix"],
        unknown_token=settings["unk_token"], max_input_chars_per_word=settings["max_input_chars_per_word"])
    # piece strings -> ids (a piece outside the vocabulary can only be the unknown token), sentinels -> the
    # added tokens' ids
    ordered = [(k, int(v)) for k, v in sorted(vocab.items(), key=lambda kv: kv[1])]
    ordered += [(sentinel(i), token_id) for i, (_, token_id) in enumerate(added)]
    unk_id, cls_id, sep_id = (int(vocab[settings[k]]) for k in ("unk_token", "cls_token", "sep_token"))
    ids = node("LabelEncoder", [pieces], ["piece_ids"], domain="ai.onnx.ml",
               keys_strings=[k for k, _ in ordered], values_int64s=[v for _, v in ordered], default_int64=unk_id)
    # A word with an unknown piece becomes one [UNK] (HuggingFace's WordPiece); the op keeps the pieces
    # before it. Every word has at least one piece, so the words' first pieces are `begins`.
    zero, one = const("zero", [0]), const("one", [1])
    unk = const("unk", [unk_id])
    is_unk = node("Cast", [node("Equal", [ids, unk], ["is_unk_b"])], ["is_unk"], to=TensorProto.INT64)
    count = node("Shape", [ids], ["n_pieces"])
    starts = node("ScatterElements", [node("ConstantOfShape", [count], ["zeros"],
                                           value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
                                      begins, node("Expand", [one, node("Shape", [begins], ["n_words"])], ["ones"])],
                  ["starts"], axis=0)
    word_of_piece = node("Sub", [node("CumSum", [starts, zero], ["word_cumsum"]), one], ["word_of_piece"])
    inclusive = node("CumSum", [is_unk, zero], ["unk_cumsum"])
    exclusive = node("Sub", [inclusive, is_unk], ["unk_before"])
    last = node("Sub", [limits, one], ["last_piece"])
    unk_per_word = node("Sub", [node("Gather", [inclusive, last], ["unk_to_last"], axis=0),
                                node("Gather", [exclusive, begins], ["unk_before_first"], axis=0)], ["unk_per_word"])
    bad_word = node("Greater", [unk_per_word, zero], ["bad_word"])
    bad_piece = node("Gather", [bad_word, word_of_piece], ["bad_piece"], axis=0)
    keep = node("Or", [node("Not", [bad_piece], ["good_piece"]),
                       node("Cast", [starts], ["is_start"], to=TensorProto.BOOL)], ["keep"])
    fixed = node("Where", [bad_piece, unk, ids], ["fixed_ids"])
    kept = node("Compress", [fixed, keep], ["kept_ids"], axis=0)
    budget = const("budget", [max(max_length - 2, 0)])
    body = node("Slice", [kept, zero, budget, zero], ["body"])
    flat = node("Concat", [const("cls", [cls_id]), body, const("sep", [sep_id])], ["flat_ids"], axis=0)
    row = node("Unsqueeze", [flat, zero], ["row_ids"])
    outputs = []
    for name in model_inputs:
        if name == "input_ids":
            value = node("Identity", [row], ["input_ids"])
        elif name == "attention_mask":
            value = node("Add", [node("Mul", [row, zero], ["row_zeros"]), one], ["attention_mask"])
        elif name == "token_type_ids":
            value = node("Mul", [row, zero], ["token_type_ids"])
        else:
            raise ConfigError(f"the model has an input '{name}' the tokenizer graph cannot build", where=OPTION,
                              fix="Drop --with-tokenizer for this model")
        outputs.append(helper.make_tensor_value_info(value, TensorProto.INT64, [1, "sequence_length"]))
    graph = helper.make_graph(nodes, "bertedge_tokenizer",
                              [helper.make_tensor_value_info("text", TensorProto.STRING, [1])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1),
                                                   helper.make_opsetid("ai.onnx.ml", 2)],
                             ir_version=onnx.IR_VERSION)


def _postprocess(model, labels: list[str] | None):
    """The model plus softmax, argmax and the label lookup after its logits."""
    from onnx import TensorProto, helper

    graph = model.graph
    names = [o.name for o in graph.output]
    if names != ["logits"]:
        raise ConfigError(f"expected one output 'logits', the graph has {', '.join(names)}", where=OPTION,
                          fix="Drop --with-tokenizer for this model")
    logits = graph.output[0]
    dims = logits.type.tensor_type.shape.dim
    n_labels = dims[-1].dim_value if len(dims) == 2 and dims[-1].dim_value else None
    if n_labels is None:
        raise ConfigError("the logits have no fixed number of labels", where=OPTION,
                          fix="Drop --with-tokenizer for this model")
    names = list(labels) if labels and len(labels) == n_labels else [str(i) for i in range(n_labels)]
    graph.initializer.append(helper.make_tensor(PREFIX + "labels", TensorProto.STRING, [n_labels],
                                                [n.encode() for n in names]))
    graph.node.extend([
        helper.make_node("Softmax", ["logits"], ["scores"], name=PREFIX + "softmax", axis=-1),
        helper.make_node("ArgMax", ["logits"], ["label_id"], name=PREFIX + "argmax", axis=-1, keepdims=0),
        helper.make_node("Gather", [PREFIX + "labels", "label_id"], ["label"], name=PREFIX + "label", axis=0),
    ])
    elem = logits.type.tensor_type.elem_type
    graph.output.extend([
        helper.make_tensor_value_info("label", TensorProto.STRING, [1]),
        helper.make_tensor_value_info("label_id", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("scores", elem, [1, n_labels]),
    ])
    return model, names


def build(bundle_dir: Path, *, task: str, input_kind: str | None, labels: list[str] | None, max_length: int,
          model_file: str = "model.onnx") -> dict:
    """Write bundle_dir/model_with_tokenizer.onnx from bundle_dir/model_file; the manifest record."""
    import onnx
    from onnx import TensorProto, helper

    ext = require_extensions()
    settings = tokenizer_settings(bundle_dir, task, input_kind)
    model = onnx.load(str(bundle_dir / model_file))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    initializers = {i.name for i in model.graph.initializer}
    model_inputs = [i.name for i in model.graph.input if i.name not in initializers]
    tokenizer = tokenizer_graph(settings, max_length, opset, model_inputs)
    tokenizer.ir_version = model.ir_version
    # the token ids also leave the graph (for checking the tokenizer against tokenizer.json)
    tokenizer.graph.node.append(helper.make_node("Identity", [PREFIX + "row_ids"], ["token_ids"],
                                                 name=PREFIX + "token_ids"))
    tokenizer.graph.output.append(helper.make_tensor_value_info("token_ids", TensorProto.INT64,
                                                                [1, "sequence_length"]))
    model, names = _postprocess(model, labels)
    merged = onnx.compose.merge_models(tokenizer, model, io_map=[(PREFIX + n, n) for n in model_inputs],
                                       outputs=list(OUTPUTS))
    onnx.checker.check_model(merged)
    path = bundle_dir / FILE
    onnx.save(merged, str(path))
    contrib = sorted({n.op_type for n in merged.graph.node if n.domain == DOMAIN})
    return {
        "file": FILE,
        "inputs": [{"name": "text", "dtype": "string", "shape": [1],
                    "note": "one UTF-8 text per run (the custom ops take one string), each NUL (U+0000) replaced "
                            "by U+FFFD (custom ops read a string up to its first NUL)"}],
        "outputs": [{"name": "label", "dtype": "string", "shape": [1]},
                    {"name": "label_id", "dtype": "int64", "shape": [1]},
                    {"name": "scores", "dtype": "float32", "shape": [1, len(names)], "note": "softmax(logits)"},
                    {"name": "logits", "dtype": "float32", "shape": [1, len(names)]},
                    {"name": "token_ids", "dtype": "int64", "shape": [1, "sequence_length"],
                     "note": "the token ids the model saw ([CLS] ... [SEP], truncated to max_length)"}],
        "labels": names,
        "custom_ops": {"package": "onnxruntime-extensions", "version": ext.__version__, "domain": DOMAIN,
                       "ops": contrib + ["LabelEncoder (ai.onnx.ml, standard)"],
                       "load": "SessionOptions.register_custom_ops_library(onnxruntime_extensions.get_library_path())"},
        "tokenizer": {"max_length": max_length, "lowercase": settings["lowercase"],
                      "added_tokens": [content for content, _ in settings["added_tokens"]],
                      "added_tokens_not_reproduced": list(settings["added_not_reproduced"]),
                      "strip_accents": settings["strip_accents"], "clean_text": settings["clean_text"],
                      "handle_chinese_chars": settings["handle_chinese_chars"],
                      "max_input_chars_per_word": settings["max_input_chars_per_word"],
                      "truncation": f"the first {max_length - 2} word pieces, then [CLS] ... [SEP]"},
        "known_differences": list(KNOWN_DIFFERENCES) + (
            [f"added tokens with normalized or single_word set, not reproduced (the graph reads them as text): "
             f"{', '.join(settings['added_not_reproduced'])}"] if settings["added_not_reproduced"]
            else []),
        "size_bytes": path.stat().st_size,
    }


def validate(bundle_dir: Path, texts: list[str], encoder, max_length: int, labels: list[str] | None,
             model_file: str = "model.onnx") -> dict:
    """The merged graph against tokenizer.json + model_file, one text at a time: token ids and labels."""
    from .providers import make_session
    from .runtime import session_forward

    graph = session(bundle_dir / FILE)
    forward = session_forward(make_session(bundle_dir / model_file))
    same_ids = same_labels = 0
    differing: list[str] = []
    max_diff = 0.0
    for text in texts:
        got = run(graph, text)
        enc = encoder.encode([text], max_length=max_length)[0]
        reference = forward(encoder.collate([{"input_ids": enc.ids, "token_type_ids": enc.type_ids}]))["logits"]
        ids_equal = got["token_ids"][0].tolist() == list(enc.ids)
        same_ids += ids_equal
        same_labels += int(got["label_id"][0]) == int(np.argmax(reference[0]))
        if ids_equal:
            max_diff = max(max_diff, float(np.max(np.abs(got["logits"].astype(np.float64) - reference))))
        elif len(differing) < 5:
            differing.append(text[:80])
    return {"texts": len(texts), "same_token_ids": same_ids, "same_labels": same_labels,
            "max_abs_logit_diff_same_ids": max_diff, "differing_examples": differing}
