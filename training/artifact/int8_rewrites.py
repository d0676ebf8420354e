"""Graph rewrites that make an encoder's activations easy to quantise, each exact in fp32.

onnxruntime's dynamic int8 MatMul quantises its activation input with one scale per tensor. In
BERT-style encoders that scale is set by a few huge input channels and by a few tokens whose rows
are much larger than the rest, so most values get only a handful of int8 levels. These rewrites
remove both effects before `quantize_dynamic` runs, without changing what the fp32 graph computes:

* `split_outlier_channels`: outlier input channels are zeroed on the int8 path and their product is
  computed in fp32 and added back (LLM.int8(), Dettmers et al., 2022);
* `normalise_layernorm_inputs`: MatMuls fed by a LayerNorm read the normalised rows before the
  LayerNorm's scale and shift, which are folded into their weights and bias, so channel ranges come
  from the data and not from the learned gains;
* `scale_per_token`: each int8 input is divided by its per-token max |x| and the product multiplied
  back, i.e. per-token activation scales, which onnxruntime's kernels do not offer;
* `row_scaled_tables`: the token embedding table stored as int8 with one scale per row
  (onnxruntime's dynamic quantisation gives a whole table one uint8 scale);
* `static_unit_activations` (after quantisation): a per-token-scaled input lies in [-1, 1] by
  construction, so its activation scale is a constant instead of one taken from the batch's
  min / max. A request's result then no longer depends on which requests share its batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def weight_matmuls(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """MatMul nodes whose second input is a 2-D initializer, grouped by their activation input."""
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            groups[node.input[0]].append(node)
    return dict(groups)


def token_rows(model: onnx.ModelProto, feeds: Iterable[Mapping[str, np.ndarray]], names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    """For each feed, the named intermediate tensors as (unpadded tokens x channels) arrays."""
    from router_model.onnx_session import make_session

    probe = _copy(model)
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = make_session(probe.SerializeToString(), threads=2)
    for feed in feeds:
        mask = np.asarray(feed["attention_mask"]).astype(bool) if "attention_mask" in feed else None
        outs = session.run(list(names), dict(feed))
        yield {name: out[mask] if mask is not None and out.shape[:2] == mask.shape else out.reshape(-1, out.shape[-1])
               for name, out in zip(names, outs)}


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def _insert(model: onnx.ModelProto, nodes: list, *, before: Mapping[int, list], after: Mapping[int, list]) -> None:
    """Insert new nodes before/after the nodes at the given positions, keeping topological order."""
    ordered: list[onnx.NodeProto] = []
    for i, node in enumerate(nodes):
        ordered += list(before.get(i, [])) + [node] + list(after.get(i, []))
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    onnx.checker.check_model(model)


def split_outlier_channels(model: onnx.ModelProto, outliers: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, list[str]]:
    """x @ W = (x * keep) @ W_in + x[:, outliers] @ W[outliers], for each input with outliers.

    Returns the new model and the names of the nodes of the fp32 side path, which the quantiser
    must leave alone.
    """
    model = _copy(model)
    inits = {i.name: i for i in model.graph.initializer}
    groups = weight_matmuls(model)
    nodes = list(model.graph.node)  # held so that later lookups return these same node objects
    position = {id(n): i for i, n in enumerate(nodes)}
    before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    after: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    fp32_nodes: list[str] = []
    for k, (x, idx) in enumerate(sorted(outliers.items())):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0 or x not in groups:
            continue
        stem = f"outlier_split_{k}"
        width = numpy_helper.to_array(inits[groups[x][0].input[1]]).shape[0]
        keep = np.ones(width, dtype=np.float32)
        keep[idx] = 0.0
        model.graph.initializer.extend(
            [numpy_helper.from_array(keep, f"{stem}_keep"), numpy_helper.from_array(idx, f"{stem}_channels")]
        )
        x_in, x_out = f"{stem}_inliers", f"{stem}_outliers"
        before[min(position[id(n)] for n in groups[x])] += [
            helper.make_node("Mul", [x, f"{stem}_keep"], [x_in], name=f"{stem}_mask"),
            helper.make_node("Gather", [x, f"{stem}_channels"], [x_out], axis=-1, name=f"{stem}_gather"),
        ]
        for j, node in enumerate(groups[x]):
            w = numpy_helper.to_array(inits[node.input[1]])
            w_in = w.copy()
            w_in[idx] = 0.0  # rows of zeroed channels would only widen the int8 weight scales
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(w_in.astype(np.float32), node.input[1]))
            w_name = f"{stem}_w{j}"
            model.graph.initializer.append(numpy_helper.from_array(w[idx].astype(np.float32), w_name))
            out = node.output[0]
            node.input[0] = x_in
            node.output[0] = f"{stem}_{j}_int8_part"
            side = helper.make_node("MatMul", [x_out, w_name], [f"{stem}_{j}_fp32_part"], name=f"{stem}_{j}_fp32_matmul")
            add = helper.make_node("Add", [node.output[0], side.output[0]], [out], name=f"{stem}_{j}_add")
            after[position[id(node)]] += [side, add]
            fp32_nodes.append(side.name)
        fp32_nodes.append(f"{stem}_gather")
    _insert(model, nodes, before=before, after=after)
    return model, fp32_nodes


def normalise_layernorm_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """MatMuls fed by LayerNorm(x; g, b) read LayerNorm(x; 1, 0) instead, with W <- diag(g) W and
    bias <- bias + b @ W. The LayerNorm itself stays for the residual path."""
    model = _copy(model)
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    nodes = list(model.graph.node)  # held so that later lookups return these same node objects
    position = {id(n): i for i, n in enumerate(nodes)}
    after: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    for k, (x, matmuls) in enumerate(weight_matmuls(model).items()):
        ln = producer.get(x)
        if ln is None or ln.op_type != "LayerNormalization" or ln.input[1] not in inits:
            continue
        gain = numpy_helper.to_array(inits[ln.input[1]]).astype(np.float64)
        shift = (numpy_helper.to_array(inits[ln.input[2]]).astype(np.float64)
                 if len(ln.input) > 2 and ln.input[2] in inits else np.zeros_like(gain))
        if gain.ndim != 1:
            continue
        stem = f"layernorm_fold_{k}"
        model.graph.initializer.extend([numpy_helper.from_array(np.ones(gain.size, np.float32), f"{stem}_one"),
                                        numpy_helper.from_array(np.zeros(gain.size, np.float32), f"{stem}_zero")])
        attrs = {a.name: helper.get_attribute_value(a) for a in ln.attribute}
        after[position[id(ln)]].append(helper.make_node(
            "LayerNormalization", [ln.input[0], f"{stem}_one", f"{stem}_zero"], [f"{stem}_normalised"], name=stem, **attrs))
        for j, node in enumerate(matmuls):
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array((gain[:, None] * w).astype(np.float32), node.input[1]))
            node.input[0] = f"{stem}_normalised"
            folded = shift @ w
            adds = [c for c in consumers[node.output[0]] if c.op_type == "Add"]
            bias = next((i for a in adds[:1] for i in a.input if i in inits), None)
            if bias is not None and len(consumers[bias]) == 1:
                b = numpy_helper.to_array(inits[bias]).astype(np.float64)
                inits[bias].CopyFrom(numpy_helper.from_array((b + folded).astype(np.float32), bias))
            elif np.any(folded):  # no bias of its own to absorb the shift: add one
                out, name = node.output[0], f"{stem}_{j}_shift"
                model.graph.initializer.append(numpy_helper.from_array(folded.astype(np.float32), name))
                node.output[0] = f"{stem}_{j}_unshifted"
                after[position[id(node)]].append(helper.make_node("Add", [node.output[0], name], [out], name=f"{name}_add"))
    _insert(model, nodes, before={}, after=after)
    return model


def scale_per_token(model: onnx.ModelProto, skip_nodes: Collection[str] = ()) -> onnx.ModelProto:
    """x @ W = s * ((x / s) @ W) with s the per-token max |x|, for every weight MatMul not in skip_nodes."""
    model = _copy(model)
    skip = set(skip_nodes)
    nodes = list(model.graph.node)  # held so that later lookups return these same node objects
    position = {id(n): i for i, n in enumerate(nodes)}
    before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    after: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    model.graph.initializer.append(numpy_helper.from_array(np.array(1e-6, np.float32), "per_token_floor"))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
        model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "per_token_axes"))
    for k, (x, matmuls) in enumerate(weight_matmuls(model).items()):
        matmuls = [n for n in matmuls if n.name not in skip]
        if not matmuls:
            continue
        stem = f"per_token_{k}"
        if opset >= 18:
            reduce = helper.make_node("ReduceMax", [f"{stem}_abs", "per_token_axes"], [f"{stem}_max"], keepdims=1, name=f"{stem}_max")
        else:
            reduce = helper.make_node("ReduceMax", [f"{stem}_abs"], [f"{stem}_max"], axes=[-1], keepdims=1, name=f"{stem}_max")
        before[min(position[id(n)] for n in matmuls)] += [
            helper.make_node("Abs", [x], [f"{stem}_abs"], name=f"{stem}_abs"),
            reduce,
            # the floor keeps an all-zero row (never seen in practice) from turning into NaN
            helper.make_node("Max", [f"{stem}_max", "per_token_floor"], [f"{stem}_scale"], name=f"{stem}_scale"),
            helper.make_node("Div", [x, f"{stem}_scale"], [f"{stem}_x"], name=f"{stem}_div"),
        ]
        for j, node in enumerate(matmuls):
            out = node.output[0]
            node.input[0], node.output[0] = f"{stem}_x", f"{stem}_{j}_scaled"
            after[position[id(node)]].append(
                helper.make_node("Mul", [node.output[0], f"{stem}_scale"], [out], name=f"{stem}_{j}_unscale"))
    _insert(model, nodes, before=before, after=after)
    return model


def token_embedding_gathers(model: onnx.ModelProto, ids_input: str = "input_ids") -> list[onnx.NodeProto]:
    """Gather nodes that look token ids up in a 2-D float initializer: the vocabulary table.

    Position and token-type tables are small and their rounding error would be shared by every
    token, so they stay fp32.
    """
    inits = {i.name: i for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits and n.input[1] == ids_input
            and len(inits[n.input[0]].dims) == 2 and inits[n.input[0]].data_type == TensorProto.FLOAT
            and all(a.i == 0 for a in n.attribute if a.name == "axis")]


def row_scaled_tables(model: onnx.ModelProto) -> onnx.ModelProto:
    """The token embedding table as symmetric int8 with one fp32 scale per row, dequantised after the lookup."""
    model = _copy(model)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = list(model.graph.node)  # held so that later lookups return these same node objects
    position = {id(n): i for i, n in enumerate(nodes)}
    after: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    done: set[str] = set()
    for node in token_embedding_gathers(model):
        table = node.input[0]
        if table not in done:
            w = numpy_helper.to_array(inits[table])
            scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12) / 127.0
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            inits[table].CopyFrom(numpy_helper.from_array(q, table))
            model.graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), f"{table}_row_scale"))
            done.add(table)
        out = node.output[0]
        node.output[0] = f"{out}_int8"
        after[position[id(node)]] += [
            helper.make_node("Gather", [f"{table}_row_scale", node.input[1]], [f"{out}_scale"], name=f"{node.name}_row_scale"),
            helper.make_node("Cast", [node.output[0]], [f"{out}_cast"], to=TensorProto.FLOAT, name=f"{node.name}_cast"),
            helper.make_node("Mul", [f"{out}_cast", f"{out}_scale"], [out], name=f"{node.name}_dequantize"),
        ]
    _insert(model, nodes, before={}, after=after)
    return model


# A per-token-scaled tensor lies in [-1, 1]: uint8 (q - 127) / 127 covers it exactly at both ends.
UNIT_SCALE = 1.0 / 127.0
UNIT_ZERO_POINT = 127


def static_unit_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """DynamicQuantizeLinear of each per-token-scaled input -> QuantizeLinear with the fixed unit scale.

    Dynamic quantisation takes one scale per tensor from the whole batch (padding included), so the
    same prompt gave slightly different probabilities in different batches (up to ~3e-3 on the
    public router). With the constant scale the int8 graph is batch-invariant, as fp32 is, and
    skips the min / max pass. Run on the output of `quantize_dynamic` after `scale_per_token`; a
    graph without such inputs (a static embedder has no weight MatMul) comes back unchanged.
    """
    model = _copy(model)
    nodes = []
    replaced = 0
    for node in model.graph.node:
        x = node.input[0] if node.input else ""
        if node.op_type == "DynamicQuantizeLinear" and x.startswith("per_token_") and x.endswith("_x"):
            y, y_scale, y_zero = node.output
            model.graph.initializer.append(numpy_helper.from_array(np.array(UNIT_SCALE, np.float32), y_scale))
            model.graph.initializer.append(numpy_helper.from_array(np.array(UNIT_ZERO_POINT, np.uint8), y_zero))
            nodes.append(helper.make_node("QuantizeLinear", [x, y_scale, y_zero], [y], name=f"{node.name}_static"))
            replaced += 1
        else:
            nodes.append(node)
    if not replaced:
        return model
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
