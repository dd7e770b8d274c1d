// Whole-graph multiply-accumulates at concrete input shapes, from the analysis' shape inference and
// per-node MAC counts. It needs no transformer structure, so it counts rewritten models as well.
import { inferShapes } from '../analysis/shapes.js';
import { sumMacs } from '../analysis/flops.js';
import type { Model } from '../ir/model.js';
import { type IrType, isTensorType, tensorType } from '../ir/types.js';

export interface MacCount {
  /** MACs of the main graph's matrix products and convolutions, or null when a shape could not be inferred */
  macs: number | null;
  /** nodes whose count is unknown (their shapes were not inferred) */
  unknown: string[];
}

/**
 * MACs with the inputs fixed to `shapes` (by input name). Shapes are inferred with concrete dims, so
 * arithmetic on sizes (padding to a multiple of k, floor and ceil) comes out as numbers. The input
 * types are restored afterwards. Subgraphs (If/Loop bodies) are not counted.
 */
export function macsAt(model: Model, shapes: ReadonlyMap<string, readonly number[]>): MacCount {
  const saved = new Map<string, IrType | undefined>();
  for (const input of model.graph.inputs) {
    const shape = shapes.get(input.name);
    if (!shape || !isTensorType(input.type)) continue;
    saved.set(input.name, input.type);
    input.type = { ...tensorType(input.type.elemType ?? 0, [...shape]), denotation: input.type.denotation };
  }
  try {
    const table = inferShapes(model.graph);
    const { macs, unknown } = sumMacs(model.graph.nodes, table);
    const unknownNames = unknown.map((n) => n.name || n.opType);
    return { macs: unknown.length ? null : macs.constant ?? null, unknown: unknownNames };
  } finally {
    for (const input of model.graph.inputs) if (saved.has(input.name)) input.type = saved.get(input.name);
  }
}
