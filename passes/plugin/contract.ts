// The plugin file contract, checked before anything is written:
//   inputs  hidden [batch, seq, d] float, inner [batch, seq/k, d] float
//   outputs compressed [batch, seq/k, d] (from hidden only), restored [batch, seq, d] (from inner and hidden)
//   metadata_props vcompile.ratio = k (integer >= 1), vcompile.scope = ffn | attention | layer
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
  const extra = inputs.find((v) => v !== hiddenInput && v !== innerInput);
  if (extra) throw refuse(`input '${extra.name}' is not part of the contract (the inputs are hidden and inner)`);
  const compressed = contractValue(graph.outputs, 'compressed', 'output', refuse);
  const restored = contractValue(graph.outputs, 'restored', 'output', refuse);
  if (dependsOn(compressed, innerInput))
    throw refuse("output 'compressed' depends on input 'inner' (it must be computed from hidden only)");
  const hiddenSize = checkRank3(hiddenInput, refuse);
  const innerSize = checkRank3(innerInput, refuse);
  if (hiddenSize !== undefined && innerSize !== undefined && hiddenSize !== innerSize) {
    throw refuse(`inputs hidden and inner have different sizes (${hiddenSize} and ${innerSize})`);
  }
  return {
    source,
    model,
    ratio: readRatio(model, refuse),
    scope: readScope(model, refuse),
    hidden: hiddenSize ?? innerSize,
    sha256,
    hiddenInput,
    innerInput,
    compressed,
    restored,
  };
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
