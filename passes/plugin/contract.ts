// The plugin file contract, checked before anything is written:
//   inputs  hidden [batch, seq, d] float, inner [batch, seq/k, d] float, optionally keep [batch, seq] float
//           (1 at real positions, 0 at the model's padding and the compiler's)
//   outputs compressed [batch, seq/k, d] (from hidden and keep), restored [batch, seq, d] (from inner,
//           hidden and keep)
//   metadata_props vcompile.ratio = k (integer >= 1), vcompile.scope = ffn | attention | layer
// The ratio is checked against the graph: its shapes are inferred at two lengths that are multiples of k.
import { shapesWithInputs } from '../../src/analysis/macs.js';
import type { SymDim } from '../../src/analysis/symbolic.js';
import { VcompileError } from '../../src/errors.js';
import type { Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/ir/types.js';
import { BUILTIN_KINDS, type BuiltinKind, SCOPES, type Scope } from './builtin.js';

export interface Plugin {
  /** how the user named it: a file path or builtin:KIND:K[:SCOPE] */
  source: string;
  model: Model;
  ratio: number;
  scope: Scope;
  /** the plugin's hidden size when its `hidden` input fixes it */
  hidden?: number;
  /** sha256 of the plugin's bytes, recorded in the compiled model's metadata */
  sha256: string;
  hiddenInput: Value;
  innerInput: Value;
  /** the optional `keep` input: when declared, the pass feeds which positions are real */
  keepInput?: Value;
  compressed: Value;
  restored: Value;
}

/**
 * The largest compression ratio a built-in plugin takes: far beyond any useful one (Variator uses 2 to
 * 16), small enough that the generated subgraphs and their shapes stay sane.
 */
export const MAX_BUILTIN_RATIO = 1024;

/** `builtin:mean:4`, `builtin:variator:2:layer`, `builtin:identity:1`: kind, ratio, scope (default ffn). */
export function parseBuiltin(spec: string): { kind: BuiltinKind; ratio: number; scope: Scope } | undefined {
  if (!spec.startsWith('builtin:')) return undefined;
  const [kind, ratioText, scopeText = 'ffn', ...rest] = spec.slice('builtin:'.length).split(':');
  const usage = `plugin ${spec}: expected builtin:KIND:K[:SCOPE] with KIND ${BUILTIN_KINDS.join('|')} and SCOPE ${SCOPES.join('|')}`;
  if (!BUILTIN_KINDS.includes(kind as BuiltinKind) || ratioText === undefined || !SCOPES.includes(scopeText as Scope) || rest.length) {
    throw new VcompileError(usage);
  }
  const ratio = Number(ratioText);
  if (ratioText.trim() === '' || Number.isNaN(ratio)) throw new VcompileError(usage);
  if (!/^\d+$/.test(ratioText) || ratio < 1 || ratio > MAX_BUILTIN_RATIO)
    throw new VcompileError(`plugin ${spec}: the ratio K must be a whole number from 1 to ${MAX_BUILTIN_RATIO}, got '${ratioText}'`);
  if (kind === 'identity' && ratio !== 1) throw new VcompileError(`plugin ${spec}: the identity plugin has ratio 1`);
  return { kind: kind as BuiltinKind, ratio, scope: scopeText as Scope };
}

/** Check a plugin model against the contract; every violation is a one-line error naming the plugin. */
export function checkPluginContract(model: Model, source: string, sha256: string): Plugin {
  const refuse = (why: string) => new VcompileError(`plugin ${source}: ${why}`);
  const graph = model.graph;
  const inputs = graph.inputs.filter((v) => !v.initializer);
  const hiddenInput = contractValue(inputs, 'hidden', 'input', refuse);
  const innerInput = contractValue(inputs, 'inner', 'input', refuse);
  const keepInput = inputs.find((v) => v.name === 'keep');
  const extra = inputs.find((v) => v !== hiddenInput && v !== innerInput && v !== keepInput);
  if (extra) throw refuse(`input '${extra.name}' is not part of the contract (the inputs are hidden, inner and optionally keep)`);
  const compressed = contractValue(graph.outputs, 'compressed', 'output', refuse);
  const restored = contractValue(graph.outputs, 'restored', 'output', refuse);
  if (dependsOn(compressed, innerInput))
    throw refuse("output 'compressed' depends on input 'inner' (it must be computed from hidden only)");
  const hiddenSize = checkRank3(hiddenInput, refuse);
  const innerSize = checkRank3(innerInput, refuse);
  if (keepInput) checkKeep(keepInput, refuse);
  if (hiddenSize !== undefined && innerSize !== undefined && hiddenSize !== innerSize) {
    throw refuse(`inputs hidden and inner have different sizes (${hiddenSize} and ${innerSize})`);
  }
  const plugin: Plugin = {
    source,
    model,
    ratio: readRatio(model, refuse),
    scope: readScope(model, refuse),
    hidden: hiddenSize ?? innerSize,
    sha256,
    hiddenInput,
    innerInput,
    ...(keepInput ? { keepInput } : {}),
    compressed,
    restored,
  };
  if (plugin.hidden !== undefined) checkRatio(plugin, plugin.hidden);
  return plugin;
}

/**
 * Refuse a plugin whose graph compresses or restores by another ratio than its vcompile.ratio says, from
 * its shapes inferred with `hidden` [2, n, d] for n = 2k and 3k (and `inner` [2, n/k, d]). Only a definite
 * contradiction refuses: a shape that cannot be inferred (an op shape inference does not know) passes.
 */
export function checkRatio(plugin: Plugin, d: number): void {
  const k = plugin.ratio;
  const batch = 2;
  for (const n of [2 * k, 3 * k]) {
    const inputs = new Map<string, number[]>([
      [plugin.hiddenInput.name, [batch, n, d]],
      [plugin.innerInput.name, [batch, n / k, d]],
    ]);
    if (plugin.keepInput) inputs.set(plugin.keepInput.name, [batch, n]);
    const shapes = shapesWithInputs(plugin.model, inputs);
    const given = `hidden [${batch}, ${n}, ${d}] and inner [${batch}, ${n / k}, ${d}]`;
    const ratioSays = `vcompile.ratio says ${k} but the graph`;
    const why =
      contradiction(shapes.shape(plugin.compressed), [batch, n / k, d], 'compressed', given, (c) =>
        withRatio(`${ratioSays} compresses ${n} positions to ${c}`, n / c),
      ) ??
      contradiction(shapes.shape(plugin.restored), [batch, n, d], 'restored', given, (r) =>
        withRatio(`${ratioSays} restores ${n / k} positions to ${r}`, (r * k) / n),
      );
    if (why) throw new VcompileError(`plugin ${plugin.source}: ${why}`);
  }
}

const withRatio = (text: string, ratio: number) => `${text}${Number.isInteger(ratio) && ratio > 0 ? ` (ratio ${ratio})` : ''}`;

/**
 * Why the inferred `shape` of an output contradicts `expected`, when a dim of it is known and differs:
 * `lengthOnly` says so when only the sequence length differs, else the whole shape is named.
 */
function contradiction(
  shape: SymDim[] | undefined,
  expected: number[],
  output: string,
  given: string,
  lengthOnly: (length: number) => string,
): string | undefined {
  if (!shape) return undefined;
  const dims = shape.map((d) => d?.constant);
  const differs = (i: number) => dims[i] !== undefined && dims[i] !== expected[i];
  const sameRank = dims.length === expected.length;
  if (sameRank && !dims.some((_, i) => differs(i))) return undefined;
  if (sameRank && !differs(0) && !differs(2)) return lengthOnly(dims[1]!);
  return `output '${output}' comes out [${dims.map((d) => d ?? '?').join(', ')}] for ${given} (expected [${expected.join(', ')}])`;
}

function contractValue(values: Value[], name: string, kind: string, refuse: (why: string) => Error): Value {
  const found = values.find((v) => v.name === name);
  if (!found) throw refuse(`missing ${kind} '${name}' (found ${values.map((v) => `'${v.name}'`).join(', ') || 'none'})`);
  return found;
}

/** The last dim of a float [batch, seq, d] input, when fixed. */
function checkRank3(value: Value, refuse: (why: string) => Error): number | undefined {
  const type = value.type;
  if (type?.kind !== 'tensor' || type.elemType !== DataType.FLOAT) throw refuse(`input '${value.name}' must be a float tensor`);
  if (type.shape && type.shape.length !== 3)
    throw refuse(`input '${value.name}' must have rank 3 ([batch, seq, d]), not ${type.shape.length}`);
  return type.shape?.[2]?.value;
}

/** `keep`: a float [batch, seq]. */
function checkKeep(value: Value, refuse: (why: string) => Error): void {
  const type = value.type;
  if (type?.kind !== 'tensor' || type.elemType !== DataType.FLOAT) throw refuse("input 'keep' must be a float tensor");
  if (type.shape && type.shape.length !== 2) throw refuse(`input 'keep' must have rank 2 ([batch, seq]), not ${type.shape.length}`);
}

function readRatio(model: Model, refuse: (why: string) => Error): number {
  const text = model.getMetadata('vcompile.ratio');
  if (text === undefined) throw refuse('metadata_props has no vcompile.ratio');
  const ratio = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(ratio) || ratio < 1)
    throw refuse(`vcompile.ratio must be an integer >= 1, got '${text}'`);
  return ratio;
}

function readScope(model: Model, refuse: (why: string) => Error): Scope {
  const text = model.getMetadata('vcompile.scope');
  if (text === undefined) throw refuse('metadata_props has no vcompile.scope');
  if (!SCOPES.includes(text as Scope)) throw refuse(`vcompile.scope must be ${SCOPES.join(', ')}; got '${text}'`);
  return text as Scope;
}

/** Whether `value` is computed (through nodes, subgraph reads included) from `source`. */
function dependsOn(value: Value, source: Value): boolean {
  const seen = new Set<Value>();
  const pending = [value];
  while (pending.length) {
    const v = pending.pop()!;
    if (v === source) return true;
    if (seen.has(v) || !v.producer) continue;
    seen.add(v);
    for (const input of [...v.producer.inputs, ...v.producer.implicitInputs()]) if (input) pending.push(input);
  }
  return false;
}
