// MACs at concrete input sizes, for the assembler. Definition (the same as `vcompile bench` reports):
// the multiply-accumulates of the main graph's matrix products (MatMul, Gemm, FusedMatMul), convolutions
// and fused attention ops, counted from shapes inferred with every input dim bound (batch and seq by
// name, as generated inputs bind them); softmax, norms, activations and other elementwise work are not
// counted. A span's MACs are those of the nodes it removes; a module's, those of its own graph with
// `hidden` [batch, seq, d] and `attention_bias` at the model's size for it.
import { type ShapeTable, inferShapes, sumMacs } from '../../src/analysis/index.js';
import { VcompileError } from '../../src/errors.js';
import type { Node, Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { type IrType, isTensorType, tensorType } from '../../src/ir/types.js';
import { bindDims, describeInputs, shapeOf } from '../../src/runtime/feeds.js';
import type { Module } from './contract.js';

export interface Point {
  batch: number;
  seq: number;
}

/** Shapes of `model`'s values with its inputs set to `shapes` (by name); the declared types are restored. */
export function shapesWithInputs(model: Model, shapes: ReadonlyMap<string, readonly number[]>): ShapeTable {
  const saved = new Map<Value, IrType | undefined>();
  for (const input of model.graph.inputs) {
    const shape = shapes.get(input.name);
    if (!shape || !isTensorType(input.type)) continue;
    saved.set(input, input.type);
    input.type = { ...tensorType(input.type.elemType ?? 0, [...shape]), denotation: input.type.denotation };
  }
  try {
    return inferShapes(model.graph);
  } finally {
    for (const [input, type] of saved) input.type = type;
  }
}

/** Shapes at `at`, the model's inputs bound as generated inputs bind them. */
export function shapesAt(model: Model, at: Point): ShapeTable {
  const specs = describeInputs(model);
  const values = bindDims(specs, at);
  return shapesWithInputs(model, new Map(specs.map((s) => [s.name, shapeOf(s, values)])));
}

/** MACs of `nodes` as a number; refuses when a count depends on a shape that was not inferred. */
export function macsOf(nodes: Iterable<Node>, shapes: ShapeTable, what: string): number {
  const { macs, unknown } = sumMacs(nodes, shapes);
  const value = macs.constant;
  if (unknown.length || value === undefined) {
    const where = unknown.length ? `shapes not inferred at ${unknown.slice(0, 3).map((n) => n.name || n.opType).join(', ')}` : 'a count stayed symbolic';
    throw new VcompileError(`cannot count the MACs of ${what}: ${where}`);
  }
  return value;
}

/** A module's MACs with `hidden` [batch, seq, d] and `attention_bias` of shape `biasShape`. */
export function moduleMacs(module: Module, at: Point, hidden: number, biasShape: readonly number[] | undefined): number {
  const shapes = new Map<string, readonly number[]>([[module.hiddenInput.name, [at.batch, at.seq, hidden]]]);
  if (module.biasInput) {
    if (!biasShape) throw new VcompileError(`module ${module.source}: the size of the model's attention bias at batch ${at.batch}, seq ${at.seq} is not known`);
    shapes.set(module.biasInput.name, biasShape);
  }
  const table = shapesWithInputs(module.model, shapes);
  return macsOf(module.model.graph.nodes, table, `module ${module.source}`);
}

/** The concrete shape of `v` in `shapes`, when every dim is a number. */
export function concreteShape(v: Value, shapes: ShapeTable): number[] | undefined {
  const dims = shapes.shape(v)?.map((d) => d?.constant);
  return dims && dims.every((d): d is number => d !== undefined) ? dims : undefined;
}
