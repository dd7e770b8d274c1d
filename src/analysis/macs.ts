// Multiply-accumulates at concrete input sizes, from shape inference and the per-node MAC counts of
// flops.ts: the matrix products (MatMul, Gemm, FusedMatMul), convolutions and fused attention ops of the
// main graph, counted from shapes inferred with every input dim bound; softmax, norms, activations and
// other elementwise work are not counted, nor are subgraphs (If/Loop bodies). It needs no transformer
// structure, so it counts rewritten models as well. `vcompile bench` and the module assembler share it.
import { VcompileError } from '../errors.js';
import type { Node, Value } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { type IrType, isTensorType, tensorType } from '../ir/types.js';
import { sumMacs } from './flops.js';
import { bindDims, type DimBinding, describeInputs, shapeOf } from './inputs.js';
import { inferShapes, type ShapeTable } from './shapes.js';

export interface MacCount {
  /** MACs of the main graph's matrix products and convolutions, or null when a shape could not be inferred */
  macs: number | null;
  /** nodes whose count is unknown (their shapes were not inferred) */
  unknown: string[];
}

/**
 * Shapes of `model`'s values with its inputs set to `shapes` (by name). Shapes are inferred with concrete
 * dims, so arithmetic on sizes (padding to a multiple of k, floor and ceil) comes out as numbers. The
 * declared input types are restored afterwards.
 */
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

/** Shapes at `at`, the model's inputs bound as generated inputs bind them (batch and seq by name). */
export function shapesAt(model: Model, at: DimBinding): ShapeTable {
  const specs = describeInputs(model);
  const values = bindDims(specs, at);
  return shapesWithInputs(model, new Map(specs.map((s) => [s.name, shapeOf(s, values)])));
}

/** The whole graph's MACs with the inputs fixed to `shapes` (by input name). */
export function macsAt(model: Model, shapes: ReadonlyMap<string, readonly number[]>): MacCount {
  const { macs, unknown } = sumMacs(model.graph.nodes, shapesWithInputs(model, shapes));
  return { macs: unknown.length ? null : (macs.constant ?? null), unknown: unknown.map((n) => n.name || n.opType) };
}

/** MACs of `nodes` as a number; refuses when a count depends on a shape that was not inferred. */
export function macsOf(nodes: Iterable<Node>, shapes: ShapeTable, what: string): number {
  const { macs, unknown } = sumMacs(nodes, shapes);
  const value = macs.constant;
  if (unknown.length || value === undefined) {
    const where = unknown.length
      ? `shapes not inferred at ${unknown
          .slice(0, 3)
          .map((n) => n.name || n.opType)
          .join(', ')}`
      : 'a count stayed symbolic';
    throw new VcompileError(`cannot count the MACs of ${what}: ${where}`);
  }
  return value;
}

/** The concrete shape of `v` in `shapes`, when every dim is a number. */
export function concreteShape(v: Value, shapes: ShapeTable): number[] | undefined {
  const dims = shapes.shape(v)?.map((d) => d?.constant);
  return dims?.every((d): d is number => d !== undefined) ? dims : undefined;
}
