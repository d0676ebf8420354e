"""The toy graphs of tests/toy_artifact.py: the tokenizer, the word-weight scoring and its ONNX graph.

How every toy graph scores a text (mirroring the real merged graph: token ids -> pooled
embedding -> [embedding | request features] -> head -> probabilities, plus the embedding output):

* The tokenizer lower-cases, splits on whitespace and punctuation (`Whitespace` pre-tokenizer)
  and wraps the text as `[CLS] ... [SEP]`. Words outside the small vocabulary are `[UNK]`.
* Every token has a *strength*: +WORD_WEIGHT for STRONG_WORDS ("prove", "theorem", ...),
  -WORD_WEIGHT for CHEAP_WORDS ("translate", "summarise", ...), 0 for every other token
  (including [CLS], [SEP] and [UNK]). Embedding column 0 is the strength; the other columns are
  seeded noise the head ignores (they make the drift centroids and `seed` meaningful).
* The graph mean-pools the token vectors over the attention mask (`sentence_embedding`), so the
  text's strength is `mean_strength(text)`: the sum of its word weights divided by its token
  count *including* [CLS] and [SEP]. A long prompt dilutes one keyword; a short one does not.

What each kind of artifact computes from that strength is in tests/toy_artifact.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from router_model.answer_features import ANSWER_FEATURES
from router_model.answer_score import SCORE_FEATURES, SCORE_FEATURES_WITH_LOGPROBS
from router_model.artifact import EMBEDDING_OUTPUT, FEATURES_INPUT
from training.escalation_export import answer_score_graph

STRONG_WORDS = ("prove", "theorem", "derive", "proof", "integral", "lemma", "induction")
CHEAP_WORDS = ("translate", "summarise", "summarize", "classify", "extract")
WORD_WEIGHT = 8.0  # |strength| of a keyword; a neutral token is 0
NEUTRAL_WORDS = (
    "the", "a", "an", "this", "that", "of", "to", "in", "into", "for", "and", "or", "is", "it", "me", "please",
    "sentence", "text", "french", "spanish", "german", "email", "dates", "names", "review", "sentiment", "following",
    "words", "five", "request", "warm", "up", "what", "why", "how", "hello", "hi", "square", "root", "two", "irrational",
    "sum", "series", "function", "code", "bug", "debug", "refactor", "python", "story", "write", "poem", "list", "give",
    "answer", "question", "from", "with", "by", "on", "about", "x", "sin", "cos", "number", "numbers", "prime",
    "infinitely", "many", "there", "are", "every", "even", "odd", "three", "short", "long", "image", "describe",
)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PAD, UNK, CLS, SEP = SPECIAL_TOKENS
OPSET = 17  # training/embedding/common.py OPSET (a literal: toy artifacts are built without training/)
IR_VERSION = 8
EMBED_DIM = 8
WORK_DIM = 512  # width of the optional busy-work layers (`work=`): they only cost time
NOISE_SCALE = 0.25
DEFAULT_MULTI_MODELS = ("gpt-4o-mini", "gpt-4o", "o1")
MULTI_GAIN = 4.0

# Route name -> (tier, keywords). Cheap routes first, as the policy builder orders its classes.
DEFAULT_POLICY_ROUTES: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "translation": ("cheap", ("translate", "french", "spanish", "german")),
    "extraction": ("cheap", ("extract", "classify", "summarise", "summarize", "list")),
    "maths": ("strong", ("prove", "theorem", "proof", "derive", "integral", "lemma", "induction")),
    "code": ("strong", ("debug", "refactor", "bug", "code", "python")),
}


# ------------------------------------------------------------------------------ tokenizer


def vocabulary() -> dict[str, int]:
    words: list[str] = list(SPECIAL_TOKENS)
    route_words = [w for _, ws in DEFAULT_POLICY_ROUTES.values() for w in ws]
    for w in (*STRONG_WORDS, *CHEAP_WORDS, *NEUTRAL_WORDS, *route_words):
        if w not in words:
            words.append(w)
    words += [p for p in ".,:;?!'\"()-" if p not in words]
    return {w: i for i, w in enumerate(words)}


VOCAB: Mapping[str, int] = vocabulary()


def toy_tokenizer(max_length: int = 128) -> Tokenizer:
    """The toy WordLevel tokenizer: lower-case, whitespace/punctuation split, `[CLS] $A [SEP]`, and the
    padding and truncation a MiniLM tokenizer.json carries (the encoder switches both off and does its own)."""
    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, VOCAB[CLS]), (SEP, VOCAB[SEP])],
    )
    tok.add_special_tokens([PAD, UNK, CLS, SEP])
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=VOCAB[PAD], pad_token=PAD)
    return tok


def token_ids(text: str, max_length: int = 128) -> list[int]:
    tok = toy_tokenizer(max_length)
    tok.no_padding()
    return tok.encode(text).ids


# ------------------------------------------------------------------------------ the scoring, in numpy


def strengths(word_weight: float = WORD_WEIGHT) -> np.ndarray:
    s = np.zeros(len(VOCAB), dtype=np.float32)
    for w in STRONG_WORDS:
        s[VOCAB[w]] = word_weight
    for w in CHEAP_WORDS:
        s[VOCAB[w]] = -word_weight
    return s


def mean_strength(text: str, *, word_weight: float = WORD_WEIGHT, max_length: int = 128) -> float:
    """What every toy graph pools from `text`: the keywords' weights over all its tokens incl. [CLS]/[SEP]
    (for a text within `max_length` tokens; a longer one is truncated head+tail by the router first)."""
    ids = token_ids(text, max_length)
    return float(strengths(word_weight)[ids].mean())


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def pair_p_cheap_ok(text: str, *, neutral_p: float = 0.6, word_weight: float = WORD_WEIGHT) -> float:
    """The toy pair's p_cheap_ok for a prompt (what `Router.predict(text).p_cheap_ok` returns, to float32)."""
    return sigmoid(logit(neutral_p) - mean_strength(text, word_weight=word_weight))


def multi_p_pass(text: str, capabilities: Sequence[float] | None = None, *, n_models: int = len(DEFAULT_MULTI_MODELS)) -> list[float]:
    """The toy N-model graph's P(pass) per model (cheapest first) for a prompt."""
    caps = default_capabilities(n_models) if capabilities is None else tuple(capabilities)
    m = mean_strength(text)
    return [sigmoid(MULTI_GAIN * (c - m)) for c in caps]


# ------------------------------------------------------------------------------ the graph


def token_table(dim: int, seed: int, strengths: np.ndarray) -> np.ndarray:
    """(vocab, dim) token vectors: column 0 the strength, the rest seeded noise the heads ignore."""
    rng = np.random.default_rng(seed)
    table = rng.normal(0.0, NOISE_SCALE, size=(len(VOCAB), dim)).astype(np.float32)
    table[:, 0] = strengths
    table[VOCAB[PAD]] = 0.0
    return table


def router_graph(
    table: np.ndarray,
    head_w: np.ndarray,
    head_b: np.ndarray,
    *,
    model_inputs: Sequence[str],
    n_features: int,
    output: str,
    activation: str,
    name: str,
    work: int = 0,
) -> onnx.ModelProto:
    """token ids -> masked mean of `table` rows (EMBEDDING_OUTPUT) -> @ head_w (+ features @ 0, + token types * 0)
    + head_b -> Softmax or Sigmoid (`output`).

    `work` > 0 adds that many (WORK_DIM x WORK_DIM) MatMul + Tanh layers over every token, padding
    included, whose result is added times 0: the same probabilities, but a run costs time in proportion
    to the batch's tokens, as a transformer's does (`write_toy_pair(work=...)`, for the deadline and
    overload tests)."""
    dim, n_out = head_w.shape
    c = numpy_helper.from_array
    inits = [
        c(table.astype(np.float32), "toy_table"),
        c(head_w.astype(np.float32), "toy_head_w"),
        c(head_b.astype(np.float32), "toy_head_b"),
        c(np.array([1], dtype=np.int64), "toy_axis_1"),
        c(np.array([2], dtype=np.int64), "toy_axis_2"),
        c(np.array(1e-9, dtype=np.float32), "toy_eps"),
        c(np.array(0.0, dtype=np.float32), "toy_zero"),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["toy_table", "input_ids"], ["toy_tokens"], axis=0),  # (batch, seq, dim)
        n("Cast", ["attention_mask"], ["toy_mask"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["toy_mask", "toy_axis_2"], ["toy_mask3"]),
        n("Mul", ["toy_tokens", "toy_mask3"], ["toy_masked"]),
        n("ReduceSum", ["toy_masked", "toy_axis_1"], ["toy_summed"], keepdims=0),
        n("ReduceSum", ["toy_mask", "toy_axis_1"], ["toy_count"], keepdims=1),
        n("Max", ["toy_count", "toy_eps"], ["toy_count_safe"]),
        n("Div", ["toy_summed", "toy_count_safe"], [EMBEDDING_OUTPUT]),
        n("MatMul", [EMBEDDING_OUTPUT, "toy_head_w"], ["toy_z0"]),
    ]
    z = "toy_z0"
    inputs = [helper.make_tensor_value_info(i, TensorProto.INT64, ["batch", "sequence"]) for i in model_inputs]
    if n_features:
        inits.append(c(np.zeros((n_features, n_out), dtype=np.float32), "toy_feature_w"))
        inputs.append(helper.make_tensor_value_info(FEATURES_INPUT, TensorProto.FLOAT, ["batch", n_features]))
        nodes += [n("MatMul", [FEATURES_INPUT, "toy_feature_w"], ["toy_zf"]), n("Add", [z, "toy_zf"], ["toy_z1"])]
        z = "toy_z1"
    if work > 0:  # one shared (WORK_DIM x WORK_DIM) weight keeps the file small however many layers
        rng = np.random.default_rng(1234)
        inits += [c(rng.normal(0.0, 1.0 / math.sqrt(dim), (dim, WORK_DIM)).astype(np.float32), "toy_work_in"),
                  c(rng.normal(0.0, 1.0 / math.sqrt(WORK_DIM), (WORK_DIM, WORK_DIM)).astype(np.float32), "toy_work_w")]
        nodes.append(n("MatMul", ["toy_tokens", "toy_work_in"], ["toy_work_0"]))
        for k in range(work):
            nodes += [n("MatMul", [f"toy_work_{k}", "toy_work_w"], [f"toy_work_m{k}"]),
                      n("Tanh", [f"toy_work_m{k}"], [f"toy_work_{k + 1}"])]
        nodes += [
            n("ReduceSum", [f"toy_work_{work}"], ["toy_work_sum"], keepdims=0),  # every axis: a scalar
            n("Mul", ["toy_work_sum", "toy_zero"], ["toy_work_zero"]),
            n("Add", [z, "toy_work_zero"], ["toy_zw"]),
        ]
        z = "toy_zw"
    if "token_type_ids" in model_inputs:
        nodes += [
            n("Cast", ["token_type_ids"], ["toy_types"], to=TensorProto.FLOAT),
            n("ReduceSum", ["toy_types", "toy_axis_1"], ["toy_types_sum"], keepdims=1),
            n("Mul", ["toy_types_sum", "toy_zero"], ["toy_types_zero"]),
            n("Add", [z, "toy_types_zero"], ["toy_z2"]),
        ]
        z = "toy_z2"
    nodes.append(n("Add", [z, "toy_head_b"], ["toy_logits"]))
    if activation == "softmax":
        nodes.append(n("Softmax", ["toy_logits"], [output], axis=-1))
    else:
        nodes.append(n("Sigmoid", ["toy_logits"], [output]))
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        [
            helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", n_out]),
            helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", dim]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="router-model-toy")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def int8_like(table: np.ndarray) -> np.ndarray:
    """The table rounded to 255 levels per row, as an int8 embedder would hold it (column 0 is kept exact)."""
    scale = np.maximum(np.abs(table[:, 1:]).max(axis=1, keepdims=True), 1e-12) / 127.0
    out = table.copy()
    out[:, 1:] = np.round(table[:, 1:] / scale) * scale
    return out


# The toy answer score (`write_toy_pair(answer_threshold=...)`): only the `final_answer` feature counts,
# score = sigmoid(ANSWER_SCORE_BIAS - ANSWER_SCORE_GAIN * final_answer): 0.88 for an answer that states
# no final answer ("The answer is ...", "Final answer: ...", \boxed{...}), 0.12 for one that does.
ANSWER_SCORE_BIAS, ANSWER_SCORE_GAIN = 2.0, 4.0


# The logprob-reading toy score adds -LOGPROB_GAIN * logprob_mean: an answer whose tokens average
# log-probability -1 scores as one that states no final answer.
LOGPROB_GAIN = ANSWER_SCORE_GAIN


def toy_answer_score(final_answer: bool, *, logprob_mean: float = 0.0) -> float:
    """What the toy answer-score graph gives an answer that does (True) or does not state a final answer
    (and, for the graph that reads them, whose tokens' mean log-probability is `logprob_mean`)."""
    return sigmoid(ANSWER_SCORE_BIAS - ANSWER_SCORE_GAIN * float(final_answer) - LOGPROB_GAIN * logprob_mean)


def toy_answer_score_graph(width: int = len(SCORE_FEATURES), *, logprobs: bool = False) -> bytes:
    """The toy answer-score graph, built by training/escalation_export.py's own builder:
    `features` float[batch, width] -> `p_escalate` float[batch]; `width` other than len(SCORE_FEATURES)
    makes a graph the loader must refuse. `logprobs`: the graph of SCORE_FEATURES_WITH_LOGPROBS."""
    if logprobs:
        width = len(SCORE_FEATURES_WITH_LOGPROBS)
    coef = np.zeros(width)
    coef[min(ANSWER_FEATURES.index("final_answer"), width - 1)] = -ANSWER_SCORE_GAIN
    if logprobs:
        coef[SCORE_FEATURES_WITH_LOGPROBS.index("logprob_mean")] = -LOGPROB_GAIN
    return answer_score_graph(mean=np.zeros(width), scale=np.ones(width), coef=coef, intercept=ANSWER_SCORE_BIAS)


def default_capabilities(n: int) -> tuple[float, ...]:
    """Cheapest first: -0.5, 1.0, 2.0, 3.0 (the priciest model's P(ok) is 1 whatever its capability)."""
    if n < 2:
        raise ValueError("an N-model artifact needs at least two models")
    return tuple(-0.5 + 1.5 * min(j, 1) + max(0, j - 1) * 1.0 for j in range(n))
