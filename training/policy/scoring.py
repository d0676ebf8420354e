"""A policy's scoring, twice: in numpy (the reference) and as an ONNX head for the router graph.

embedding -> cosine similarity to every example -> per route, the best example -> per tier, the best
route. p_cheap_ok = sigmoid(sharpness * (best cheap - best strong) + bias); each tier's probability is
shared among its routes by softmax(similarity / temperature), so the class probabilities (one class
per route, cheap routes first) sum to 1 and the router's sum over the cheap classes is p_cheap_ok.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from router_model.artifact import PROBABILITIES_OUTPUT
from training.artifact.graph import HEAD_INPUT
from training.embedding.common import OPSET
from training.policy.schema import Policy, Scoring

EPS = 1e-12


@dataclass(frozen=True)
class PolicyMatrix:
    """The examples' unit embeddings and which route (class index) each belongs to."""

    examples: np.ndarray  # (n_examples, dim) float32, unit rows
    route_of: np.ndarray  # (n_examples,) int64 class index
    n_cheap: int  # classes [0, n_cheap) are cheap routes
    n_routes: int


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)


def policy_matrix(policy: Policy, embeddings: np.ndarray) -> PolicyMatrix:
    """`embeddings`: one row per example, in `policy.ordered_routes` order."""
    routes = policy.ordered_routes
    route_of = np.concatenate([np.full(len(r.examples), k, dtype=np.int64) for k, r in enumerate(routes)])
    if len(route_of) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings for {len(route_of)} examples")
    return PolicyMatrix(_unit(embeddings), route_of, sum(r.tier == "cheap" for r in routes), len(routes))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def route_similarities(m: PolicyMatrix, embeddings: np.ndarray) -> np.ndarray:
    """(n, n_routes): each request's best cosine similarity to each route's examples."""
    sims = _unit(embeddings) @ m.examples.T
    return np.stack([sims[:, m.route_of == k].max(axis=1) for k in range(m.n_routes)], axis=1)


def reference_probabilities(m: PolicyMatrix, scoring: Scoring, embeddings: np.ndarray) -> np.ndarray:
    """(n, n_routes) class probabilities, as the ONNX head computes them."""
    rs = route_similarities(m, embeddings).astype(np.float64)
    c, s = rs[:, : m.n_cheap], rs[:, m.n_cheap :]
    p = 1.0 / (1.0 + np.exp(-(scoring.sharpness * (c.max(axis=1) - s.max(axis=1)) + scoring.bias)))
    return np.hstack([_softmax(c / scoring.temperature) * p[:, None], _softmax(s / scoring.temperature) * (1 - p)[:, None]])


def head_onnx(m: PolicyMatrix, scoring: Scoring, ir_version: int) -> onnx.ModelProto:
    """HEAD_INPUT (batch, dim) -> PROBABILITIES_OUTPUT (batch, n_routes): `reference_probabilities` as a graph."""
    dim = m.examples.shape[1]
    counts = np.bincount(m.route_of, minlength=m.n_routes)
    width = int(counts.max())
    # (n_routes, width) example indices; short routes repeat their first example (the max is unchanged)
    idx = np.zeros((m.n_routes, width), dtype=np.int64)
    for k in range(m.n_routes):
        own = np.flatnonzero(m.route_of == k)
        idx[k] = np.concatenate([own, np.full(width - len(own), own[0])])

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, name)

    inits = [
        const("policy_examples_t", m.examples.T.astype(np.float32).copy()),
        const("policy_example_index", idx),
        const("policy_cheap_routes", np.arange(m.n_cheap, dtype=np.int64)),
        const("policy_strong_routes", np.arange(m.n_cheap, m.n_routes, dtype=np.int64)),
        const("policy_eps", np.array(EPS, dtype=np.float32)),
        const("policy_sharpness", np.array(scoring.sharpness, dtype=np.float32)),
        const("policy_bias", np.array(scoring.bias, dtype=np.float32)),
        const("policy_inv_temperature", np.array(1.0 / scoring.temperature, dtype=np.float32)),
        const("policy_one", np.array(1.0, dtype=np.float32)),
    ]
    n = helper.make_node
    nodes = [
        n("ReduceL2", [HEAD_INPUT], ["p_norm"], axes=[1], keepdims=1),
        n("Max", ["p_norm", "policy_eps"], ["p_norm_safe"]),
        n("Div", [HEAD_INPUT, "p_norm_safe"], ["p_unit"]),
        n("MatMul", ["p_unit", "policy_examples_t"], ["p_sims"]),  # (batch, n_examples)
        n("Gather", ["p_sims", "policy_example_index"], ["p_sims_by_route"], axis=1),  # (batch, routes, width)
        n("ReduceMax", ["p_sims_by_route"], ["p_route_sims"], axes=[2], keepdims=0),  # (batch, routes)
        n("Gather", ["p_route_sims", "policy_cheap_routes"], ["p_cheap_sims"], axis=1),
        n("Gather", ["p_route_sims", "policy_strong_routes"], ["p_strong_sims"], axis=1),
        n("ReduceMax", ["p_cheap_sims"], ["p_best_cheap"], axes=[1], keepdims=1),
        n("ReduceMax", ["p_strong_sims"], ["p_best_strong"], axes=[1], keepdims=1),
        n("Sub", ["p_best_cheap", "p_best_strong"], ["p_gap"]),
        n("Mul", ["p_gap", "policy_sharpness"], ["p_gap_scaled"]),
        n("Add", ["p_gap_scaled", "policy_bias"], ["p_logit"]),
        n("Sigmoid", ["p_logit"], ["p_cheap_ok"]),
        n("Sub", ["policy_one", "p_cheap_ok"], ["p_strong"]),
        n("Mul", ["p_cheap_sims", "policy_inv_temperature"], ["p_cheap_z"]),
        n("Mul", ["p_strong_sims", "policy_inv_temperature"], ["p_strong_z"]),
        n("Softmax", ["p_cheap_z"], ["p_cheap_share"], axis=1),
        n("Softmax", ["p_strong_z"], ["p_strong_share"], axis=1),
        n("Mul", ["p_cheap_share", "p_cheap_ok"], ["p_cheap_probs"]),
        n("Mul", ["p_strong_share", "p_strong"], ["p_strong_probs"]),
        n("Concat", ["p_cheap_probs", "p_strong_probs"], [PROBABILITIES_OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "day0_policy_head",
        [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["batch", m.n_routes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def head_parity(head: onnx.ModelProto, m: PolicyMatrix, scoring: Scoring, *, embeddings: np.ndarray) -> float:
    """Max abs difference between the ONNX head and the numpy reference."""
    from router_model.onnx_session import make_session

    sess = make_session(head.SerializeToString(), threads=1)
    got = sess.run([PROBABILITIES_OUTPUT], {HEAD_INPUT: np.asarray(embeddings, dtype=np.float32)})[0]
    return float(np.abs(got - reference_probabilities(m, scoring, embeddings)).max())
