// builtin:average: one layer standing in for a span, with the structure of the span's first layer and,
// for every float weight, the element-wise mean of the corresponding weights of all the span's layers.
// Layers correspond when they are the same computation: the same op sequence (in graph order, weight-only
// computations included), the same attributes, the same wiring, and weights of the same type and shape
// at the same places. Anything else they read (the mask, a position bias, the encoder states) must be
// the same value for all of them; non-float constants (shape vectors) must be equal.
import type { TransformerAnalysis } from '../../src/analysis/index.js';
import { type Label, msg, VcompileError } from '../../src/errors.js';
import type { Attribute, Node, Value } from '../../src/ir/graph.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType, dataTypeName } from '../../src/ir/types.js';
import { describeSpan, type Span } from './span.js';

export interface Averaged {
  /** the first layer's nodes (weight-only computations and the layer itself), in graph order */
  nodes: Node[];
  input: Value;
  output: Value;
  /** the first layer's float weights whose mean differs from them, with the mean */
  means: Map<Value, Tensor>;
}

/** Plan the average of `span`'s layers; throws, naming the difference, when they do not correspond. */
export function averageLayers(span: Span, analysis: TransformerAnalysis, constantValues: ReadonlySet<Value>, what: Label): Averaged {
  const layers = span.layers.map((l) => describeSpan(analysis, l.index, l.index, constantValues, what));
  const order = analysis.context.order;
  const sequences = layers.map((l) => [...l.cone, ...l.region].sort((a, b) => order.get(a)! - order.get(b)!));
  const first = layers[0];
  const firstNodes = sequences[0];
  const matches = new Map<Value, Value[]>(first.constants.map((c) => [c, [c]]));
  for (let i = 1; i < layers.length; i++) {
    const differ = (why: string) =>
      new VcompileError(
        msg`${what}: layer ${layers[i].start} differs from layer ${first.start} in structure: ${why}; builtin:average needs layers of one structure`,
      );
    const nodes = sequences[i];
    if (nodes.length !== firstNodes.length) throw differ(`${nodes.length} nodes instead of ${firstNodes.length}`);
    const positionA = positions(firstNodes);
    const positionB = positions(nodes);
    firstNodes.forEach((a, k) => {
      const b = nodes[k];
      if (a.opType !== b.opType || (a.domain ?? '') !== (b.domain ?? ''))
        throw differ(`node ${k} is ${b.qualifiedOp}, not ${a.qualifiedOp}`);
      if (a.subgraphs().length || b.subgraphs().length)
        throw differ(`node ${k} (${a.qualifiedOp}) holds subgraphs, which are not compared`);
      if (!sameAttributes(a.attributes, b.attributes)) throw differ(`the attributes of node ${k} (${a.qualifiedOp}) differ`);
      if (a.inputs.length !== b.inputs.length || a.outputs.length !== b.outputs.length)
        throw differ(`node ${k} (${a.qualifiedOp}) has other inputs or outputs`);
      a.inputs.forEach((x, j) => {
        const y = b.inputs[j];
        const where = `input ${j} of node ${k} (${a.qualifiedOp})`;
        if (!x || !y) {
          if (x || y) throw differ(`${where} is present in one layer only`);
          return;
        }
        if (x === first.hidden || y === layers[i].hidden) {
          if (x !== first.hidden || y !== layers[i].hidden) throw differ(`${where} reads the layer input in one layer only`);
          return;
        }
        const [px, py] = [positionA.get(x), positionB.get(y)];
        if (px !== undefined || py !== undefined) {
          if (px !== py) throw differ(`${where} is wired differently`);
          return;
        }
        const [tx, ty] = [x.constTensor(), y.constTensor()];
        if (tx && ty) {
          if (tx.dataType !== ty.dataType || !sameDims(tx.dims, ty.dims)) {
            throw differ(`weight ${y.name} is ${describe(ty)} where layer ${first.start} has ${x.name}, ${describe(tx)}`);
          }
          const list = matches.get(x)!;
          const previous = list[i];
          if (previous && previous !== y && !sameBytes(previous.constTensor()!, ty))
            throw differ(`${x.name} is used where layer ${layers[i].start} reads two different weights`);
          list[i] = y;
          return;
        }
        if (x !== y) throw differ(`${where} reads ${y.name}, not ${x.name} (values from outside the layers must be shared)`);
      });
    });
  }
  return { nodes: firstNodes, input: first.hidden, output: first.output, means: means(matches, layers.length, what) };
}

function positions(nodes: Node[]): Map<Value, string> {
  const map = new Map<Value, string>();
  nodes.forEach((n, k) => n.outputs.forEach((o, j) => o && map.set(o, `${k}:${j}`)));
  return map;
}

/** The mean of each weight over the layers, for float weights where it differs from the first layer's. */
function means(matches: Map<Value, Value[]>, layerCount: number, what: Label): Map<Value, Tensor> {
  const result = new Map<Value, Tensor>();
  for (const [weight, list] of matches) {
    const tensors = list.map((v) => v.constTensor()!);
    if (tensors.length < layerCount) continue; // read only where the other layers read nothing: structure checks ruled that out
    if (tensors.every((t) => t === tensors[0] || sameBytes(t, tensors[0]))) continue;
    if (tensors[0].dataType !== DataType.FLOAT) {
      throw new VcompileError(
        msg`${what}: ${weight.name} (${dataTypeName(tensors[0].dataType)}) differs between the layers; builtin:average averages float weights and needs other constants equal`,
      );
    }
    const sum = new Float64Array(tensors[0].size);
    for (const t of tensors) t.toFloat32().forEach((x, i) => (sum[i] += x));
    const mean = Float32Array.from(sum, (s) => s / tensors.length);
    result.set(weight, Tensor.fromArray(weight.name, DataType.FLOAT, [...tensors[0].dims], mean));
  }
  return result;
}

function describe(t: Tensor): string {
  return `${dataTypeName(t.dataType)} [${t.dims.join(', ')}]`;
}

function sameDims(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function sameBytes(a: Tensor, b: Tensor): boolean {
  if (a.dataType !== b.dataType || !sameDims(a.dims, b.dims)) return false;
  const x = a.bytes();
  const y = b.bytes();
  return (
    x.length === y.length && Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(y.buffer, y.byteOffset, y.byteLength))
  );
}

function sameAttributes(a: Attribute[], b: Attribute[]): boolean {
  if (a.length !== b.length) return false;
  const key = (attr: Attribute) =>
    JSON.stringify(attr, (k, v) =>
      k === 't'
        ? tensorKey(v as Tensor)
        : typeof v === 'bigint'
          ? `${v}n`
          : v instanceof Uint8Array
            ? Buffer.from(v).toString('base64')
            : v,
    );
  const sorted = (list: Attribute[]) => list.map(key).sort();
  const [x, y] = [sorted(a), sorted(b)];
  return x.every((s, i) => s === y[i]);
}

function tensorKey(t: Tensor): string {
  return `${t.dataType}|${t.dims.join(',')}|${Buffer.from(t.bytes()).toString('base64')}`;
}
