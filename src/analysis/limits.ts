// How long a sequence a model can run, and how long the sequence inside its transformer is, from the graph.
// A model whose positions index a table cannot run past the table: a weight sliced to the sequence
// length (HF's position_ids / token_type_ids buffers), a Gather of a weight by indices computed from input
// shapes alone (learned position embeddings, offsets included), ORT's EmbedLayerNormalization position
// table. Generated inputs stay within that bound, as ids stay within the embedding table.
import type { Graph, Node, Value } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { EvaluationError, evaluate } from './evaluate.js';
import { bindDims, type DimBinding, describeInputs } from './inputs.js';
import { inferShapes } from './shapes.js';
import type { SymDim } from './symbolic.js';

/** A table indexed by position: how many rows a binding needs, and how messages name it. */
interface PositionTable {
  rows: number;
  name: string;
  /** the rows the model reads at a binding (undefined when the positions depend on input values) */
  needs(shapeOf: (v: Value) => number[] | undefined): number | undefined;
}

export interface SequenceLimit {
  /** the longest sequence the model runs */
  max: number;
  /** the table that bounds it */
  table: string;
}

/**
 * The longest length the sequence dims can take (searched up to `ceiling`), or undefined when no table
 * bounds it. All sequence-like dims take the same value, as generated inputs bind them.
 */
export function sequenceLimit(
  model: Model,
  options: { batch?: number; dims?: Readonly<Record<string, number>>; ceiling?: number } = {},
): SequenceLimit | undefined {
  const tables = positionTables(model.graph);
  if (tables.length === 0) return undefined;
  const specs = describeInputs(model, { allowUnshaped: true });
  const shapes = inferShapes(model.graph);
  const overflow = (seq: number): string | undefined => {
    const binding = bindDims(specs, { batch: options.batch ?? 1, seq, dims: options.dims });
    const shapeOf = (v: Value) => concrete(shapes.shape(v), binding);
    return tables.find((t) => (t.needs(shapeOf) ?? 0) > t.rows)?.name;
  };
  const ceiling = options.ceiling ?? 1 << 16;
  const atCeiling = overflow(ceiling);
  if (!atCeiling) return undefined;
  if (overflow(1)) return { max: 0, table: overflow(1)! };
  let [fits, fails] = [1, ceiling];
  while (fails - fits > 1) {
    const mid = (fits + fails) >> 1;
    if (overflow(mid)) fails = mid;
    else fits = mid;
  }
  return { max: fits, table: overflow(fails)! };
}

function concrete(shape: readonly SymDim[] | undefined, binding: ReadonlyMap<string, number>): number[] | undefined {
  if (!shape) return undefined;
  const out: number[] = [];
  for (const d of shape) {
    const v = d?.evaluate(binding);
    if (v === undefined) return undefined;
    out.push(v);
  }
  return out;
}

/** The largest element of `v`, evaluated from shapes alone (undefined when that is not possible). */
function largest(v: Value, shapeOf: (v: Value) => number[] | undefined): number | undefined {
  try {
    return evaluate([v], new Map(), { shapeOf })[0].data.reduce((m, x) => Math.max(m, x), -Infinity);
  } catch (error) {
    if (error instanceof EvaluationError) return undefined;
    throw error;
  }
}

/** Lookups into weights whose positions are computed from shapes only. */
function positionTables(graph: Graph): PositionTable[] {
  const tables: PositionTable[] = [];
  for (const node of graph.nodes) {
    const domain = node.domain ?? '';
    if (node.opType === 'Gather' && domain === '') {
      const table = node.inputs[0]?.constTensor();
      const indices = node.inputs[1];
      if (!table || !indices || node.attrInt('axis', 0) !== 0 || readsInputValues(indices)) continue;
      const rows = table.dims[0];
      tables.push({ rows, name: `${node.inputs[0]!.name} (${rows} rows)`, needs: (shapeOf) => plusOne(largest(indices, shapeOf)) });
    } else if (node.opType === 'Slice' && domain === '' && node.inputs.length >= 4) {
      const data = node.inputs[0]?.constTensor();
      const axes = node.inputs[3]?.constTensor()?.toBigInts().map(Number);
      const ends = node.inputs[2];
      if (!data || !ends || axes?.length !== 1 || readsInputValues(ends)) continue;
      const axis = axes[0] < 0 ? axes[0] + data.dims.length : axes[0];
      const rows = data.dims[axis];
      tables.push({ rows, name: `${node.inputs[0]!.name} (${rows} along axis ${axis})`, needs: (shapeOf) => largest(ends, shapeOf) });
    } else if (node.opType === 'EmbedLayerNormalization' && domain === 'com.microsoft') {
      const positions = node.inputs[3]?.constTensor();
      const ids = node.inputs[0];
      if (!positions || !ids) continue;
      const rows = positions.dims[0];
      tables.push({ rows, name: `${node.inputs[3]!.name} (${rows} positions)`, needs: (shapeOf) => shapeOf(ids)?.[1] });
    }
  }
  return tables;
}

function plusOne(n: number | undefined): number | undefined {
  return n === undefined ? undefined : n + 1;
}

/** Whether `v` depends on a graph input's values (not only on shapes, which Shape nodes read). */
function readsInputValues(v: Value): boolean {
  const seen = new Set<Node>();
  const pending: Value[] = [v];
  while (pending.length) {
    const x = pending.pop()!;
    if (x.isGraphInput && !x.initializer) return true;
    const p = x.producer;
    if (!p || seen.has(p)) continue;
    seen.add(p);
    if (p.opType === 'Shape' || p.opType === 'Size') continue;
    for (const input of p.inputs) if (input) pending.push(input);
  }
  return false;
}

/** The transformer's sequence length as a function of the input dims, evaluated at a binding. */
export function innerLength(length: SymDim, specs: ReturnType<typeof describeInputs>, binding: DimBinding): number | undefined {
  return length?.evaluate(bindDims(specs, binding));
}
