// What a model takes as input, read from its graph: each input's role (mask, positions, token types, ids,
// floats), its (symbolic) shape, the vocabulary bound of id inputs (from the embedding table they index),
// and how symbolic dims are bound to concrete sizes (batch and seq by name). Feeds are generated and read
// from files on top of this (src/runtime/feeds.ts); MACs at concrete sizes use the same binding.
import { msg, option, VcompileError } from '../errors.js';
import type { Value } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { isFloatType } from '../ir/tensor.js';
import { type Dim, isTensorType } from '../ir/types.js';

export type InputRole = 'mask' | 'positions' | 'tokenTypes' | 'float' | 'ids' | 'other';

export interface InputSpec {
  name: string;
  dataType: number;
  /** declared dims; a dim without value is symbolic (named by `param`, or unnamed) */
  dims: Dim[];
  role: InputRole;
  /** exclusive upper bound of generated ids (integer inputs that index an embedding table) */
  vocab?: number;
  /** the model declares no shape (allowed only when the values come from files) */
  unshaped?: true;
}

/** Values for symbolic dims: `batch` and `seq` by the rule in `dimKind`, and any dim by name. */
export interface DimBinding {
  batch: number;
  seq: number;
  /** by dim name (dim_param), or `input.axis` for an unnamed dim; wins over batch/seq */
  dims?: Readonly<Record<string, number>>;
}

/**
 * The inputs a caller must feed (inputs with an initializer have a default and are left out).
 * `allowUnshaped`: accept inputs without a declared shape (for feeds read from files).
 */
export function describeInputs(model: Model, options: { allowUnshaped?: boolean } = {}): InputSpec[] {
  const graph = model.graph;
  const withDefault = new Set(graph.initializers.map((v) => v.name));
  const vocab = vocabularyBounds(model);
  return graph.inputs
    .filter((v) => !withDefault.has(v.name))
    .map((v) => {
      if (!isTensorType(v.type) || v.type.elemType === undefined)
        throw new VcompileError(
          msg`input ${v.name}: not a tensor of known element type; give its values with ${option('inputsDir', 'DIR', 'inputsDir')}`,
        );
      if (!v.type.shape && !options.allowUnshaped)
        throw new VcompileError(msg`input ${v.name}: no declared shape; give its values with ${option('inputsDir', 'DIR', 'inputsDir')}`);
      const dataType = v.type.elemType;
      const role = roleOf(v.name, dataType, vocab.has(v.name));
      const spec: InputSpec = {
        name: v.name,
        dataType,
        dims: v.type.shape ?? [],
        role,
        ...(role === 'ids' && vocab.has(v.name) ? { vocab: vocab.get(v.name) } : {}),
      };
      if (!v.type.shape) spec.unshaped = true;
      return spec;
    });
}

function roleOf(name: string, dataType: number, indexesTable: boolean): InputRole {
  if (/mask/i.test(name)) return 'mask';
  if (isFloatType(dataType)) return 'float';
  if (/position/i.test(name) || /^pos_?ids?$/i.test(name)) return 'positions';
  if (/token_?type|segment/i.test(name)) return 'tokenTypes';
  if (indexesTable || /ids$|^tokens?$/i.test(name)) return 'ids';
  return 'other';
}

/** Ops that carry indices through unchanged in value (only the shape or the integer type changes). */
const INDEX_PASS_THROUGH = new Set(['Cast', 'Identity', 'Reshape', 'Unsqueeze', 'Squeeze', 'Flatten', 'Expand']);

/**
 * Vocabulary size per graph input: the smallest table among the embedding lookups the input feeds
 * (Gather with a weight as data, directly or through casts and reshapes; ORT's EmbedLayerNormalization).
 */
export function vocabularyBounds(model: Model): Map<string, number> {
  const graph = model.graph;
  const inputs = new Set(graph.inputs);
  const bounds = new Map<string, number>();
  const record = (indices: Value | null | undefined, rows: number | undefined) => {
    const source = traceIndices(indices);
    if (!source || !inputs.has(source) || rows === undefined) return;
    bounds.set(source.name, Math.min(bounds.get(source.name) ?? Infinity, rows));
  };
  for (const node of graph.nodes) {
    const domain = node.domain ?? '';
    if (node.opType === 'Gather' && domain === '') {
      const table = node.inputs[0]?.constTensor();
      if (!table) continue;
      const axis = node.attrInt('axis', 0);
      record(node.inputs[1], table.dims[axis < 0 ? axis + table.dims.length : axis]);
    } else if (node.opType === 'EmbedLayerNormalization' && domain === 'com.microsoft') {
      record(node.inputs[0], node.inputs[2]?.constTensor()?.dims[0]);
      record(node.inputs[1], node.inputs[4]?.constTensor()?.dims[0]);
    }
  }
  return bounds;
}

function traceIndices(value: Value | null | undefined): Value | undefined {
  let v = value ?? undefined;
  for (let steps = 0; v && steps < 16; steps++) {
    const p = v.producer;
    if (!p || !INDEX_PASS_THROUGH.has(p.opType) || (p.domain ?? '') !== '') return v;
    v = p.inputs[0] ?? undefined;
  }
  return v;
}

/** How a symbolic dim is bound when --dim does not name it: axis 0 is the batch unless its name says length. */
export function dimKind(dim: Dim, axis: number): 'batch' | 'seq' {
  const name = dim.param ?? '';
  if (/batch/i.test(name)) return 'batch';
  if (axis === 0 && !/seq|len|time|step|token|position|width|height|past|total|decoder/i.test(name)) return 'batch';
  return 'seq';
}

/** The name a symbolic dim is bound by: its dim_param, or `input.axis` (as shape inference names unnamed dims). */
export function dimKey(input: string, axis: number, dim: Dim): string {
  return dim.param ?? `${input}.${axis}`;
}

/** The names symbolic input dims are bound by (what `dims` can name), each once, in input order. */
export function symbolicDimNames(specs: readonly InputSpec[]): string[] {
  const names = new Set<string>();
  for (const spec of specs) spec.dims.forEach((dim, axis) => dim.value === undefined && names.add(dimKey(spec.name, axis, dim)));
  return [...names];
}

/** Refuses a binding in `dims` that names no symbolic dim of the inputs of `models` (it would bind nothing). */
export function checkDimNames(
  specs: readonly InputSpec[],
  dims: Readonly<Record<string, number>> | undefined,
  models: readonly string[],
): void {
  const known = symbolicDimNames(specs);
  for (const [name, value] of Object.entries(dims ?? {})) {
    if (known.includes(name)) continue;
    const what =
      models.length === 1 ? `${models[0]} has no input dim named ${name}` : `none of ${models.join(', ')} has an input dim named ${name}`;
    const which = known.length ? `the symbolic input dims are ${known.join(', ')}` : 'there are no symbolic input dims';
    throw new VcompileError(msg`${option('dims', `${name}=${value}`, `dims.${name}`)}: ${what} (${which})`);
  }
}

/**
 * Every symbolic dim of the inputs with its value. Dims sharing a name share a value; the first input
 * that names a dim decides whether it is a batch or a sequence dim.
 */
export function bindDims(specs: readonly InputSpec[], binding: DimBinding): Map<string, number> {
  const values = new Map<string, number>();
  for (const spec of specs) {
    spec.dims.forEach((dim, axis) => {
      if (dim.value !== undefined) return;
      const key = dimKey(spec.name, axis, dim);
      if (values.has(key)) return;
      values.set(key, binding.dims?.[key] ?? (dimKind(dim, axis) === 'batch' ? binding.batch : binding.seq));
    });
  }
  return values;
}

export function shapeOf(spec: InputSpec, values: ReadonlyMap<string, number>): number[] {
  return spec.dims.map((dim, axis) => dim.value ?? values.get(dimKey(spec.name, axis, dim))!);
}

/** Generated feeds for every input at `binding`, deterministic in `seed`. */
