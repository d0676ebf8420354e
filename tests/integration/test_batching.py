"""Dynamic batching with the real int8 recipe: a trained router's int8 graph is batch invariant.

The int8 recipe's activation scales are fixed (training/artifact/int8_rewrites.py,
`static_unit_activations`), so the graph's result does not depend on a request's batch companions.
The batcher, the gRPC service and the gateway with batching: tests/unit/test_batching.py.
"""

from __future__ import annotations

from router_model.router import Router

PROMPTS = [
    "What is 2 + 2?",
    "Prove that there are infinitely many primes, then generalise the argument to primes of the form 4k+3.",
    "Translate 'good morning' into French.",
    "Write a Python function that merges overlapping intervals and analyse its complexity.",
    "Summarise the causes of the French Revolution in three bullet points.",
    "Label the sentiment of: 'The battery lasts all day.'",
    "Derive the closed form of the sum of the first n squares and prove it by induction.",
    "Is this ticket about billing or shipping? 'I was charged twice.'",
]
TOL = 1e-6


def _same(a, b) -> None:
    assert (a.model, a.reason, a.prompt_tokens, a.artifact_version) == (b.model, b.reason, b.prompt_tokens, b.artifact_version)
    if a.p_cheap_ok is None:
        assert b.p_cheap_ok is None
    else:
        assert abs(a.p_cheap_ok - b.p_cheap_ok) <= TOL
        assert abs(a.confidence - b.confidence) <= TOL


def test_int8_is_batch_invariant(model_dir):
    """The same prompt, alone or among companions of other lengths: the same probability (1e-6)."""
    r = Router.load(model_dir, graph="int8")
    singles = [r.predict(p) for p in PROMPTS]
    long = "Summarise the following report in three bullet points. " * 20
    for batch in (PROMPTS, [*PROMPTS, long], [long, *reversed(PROMPTS)]):
        got = dict(zip(batch, r.predict_batch(batch)))
        for prompt, s in zip(PROMPTS, singles):
            _same(s, got[prompt])
