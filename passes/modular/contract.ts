// The module file contract, checked before anything is written:
//   inputs   hidden [batch, seq, d] float; attention_bias (optional): the value the replaced layers apply
//            to their attention scores, as the model computes it (e.g. [batch, 1, 1, seq])
//   output   hidden_out [batch, seq, d]: replaces the output of the last replaced layer
//   metadata_props vcompile.span = how many consecutive layers it replaces (integer >= 1);
//            vcompile.start (optional) = the first layer it was made for (written by `vcompile extract`)
import { VcompileError } from '../../src/errors.js';
import type { Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { DataType, isTensorType } from '../../src/ir/types.js';

export const HIDDEN = 'hidden';
export const ATTENTION_BIAS = 'attention_bias';
export const HIDDEN_OUT = 'hidden_out';
export const SPAN_KEY = 'vcompile.span';
export const START_KEY = 'vcompile.start';

export interface Module {
  /** how the user named it: a file path */
  source: string;
  model: Model;
  span: number;
  /** the first layer it was made for, from vcompile.start */
  start?: number;
  /** the hidden size when `hidden` fixes it */
  hidden?: number;
  sha256: string;
  hiddenInput: Value;
  biasInput?: Value;
  output: Value;
}

/** Check a module model against the contract; every violation is a one-line error naming the module. */
export function checkModuleContract(model: Model, source: string, sha256: string): Module {
  const refuse = (why: string) => new VcompileError(`module ${source}: ${why}`);
  const graph = model.graph;
  const inputs = graph.inputs.filter((v) => !v.initializer);
  const hiddenInput = inputs.find((v) => v.name === HIDDEN);
  if (!hiddenInput) throw refuse(`missing input '${HIDDEN}' (found ${names(inputs)})`);
  const biasInput = inputs.find((v) => v.name === ATTENTION_BIAS);
  const extra = inputs.find((v) => v !== hiddenInput && v !== biasInput);
  if (extra)
    throw refuse(`input '${extra.name}' is not part of the contract (the inputs are ${HIDDEN} and, optionally, ${ATTENTION_BIAS})`);
  const output = graph.outputs.find((v) => v.name === HIDDEN_OUT);
  if (!output) throw refuse(`missing output '${HIDDEN_OUT}' (found ${names(graph.outputs)})`);
  const extraOut = graph.outputs.find((v) => v !== output);
  if (extraOut) throw refuse(`output '${extraOut.name}' is not part of the contract (the output is ${HIDDEN_OUT})`);
  const inSize = hiddenSize(hiddenInput, refuse);
  const outSize = hiddenSize(output, refuse);
  if (inSize !== undefined && outSize !== undefined && inSize !== outSize)
    throw refuse(`${HIDDEN} has size ${inSize} but ${HIDDEN_OUT} has ${outSize}`);
  const span = readCount(model, SPAN_KEY, 1, refuse);
  if (span === undefined) throw refuse(`metadata_props has no ${SPAN_KEY} (how many consecutive layers the module replaces)`);
  return {
    source,
    model,
    span,
    start: readCount(model, START_KEY, 0, refuse),
    hidden: inSize ?? outSize,
    sha256,
    hiddenInput,
    biasInput,
    output,
  };
}

function names(values: Value[]): string {
  return values.map((v) => `'${v.name}'`).join(', ') || 'none';
}

/** The last dim of a float [batch, seq, d] value, when fixed. */
function hiddenSize(value: Value, refuse: (why: string) => Error): number | undefined {
  const type = value.type;
  if (!isTensorType(type) || type.elemType !== DataType.FLOAT) throw refuse(`'${value.name}' must be a float tensor`);
  if (type.shape && type.shape.length !== 3) throw refuse(`'${value.name}' must have rank 3 ([batch, seq, d]), not ${type.shape.length}`);
  return type.shape?.[2]?.value;
}

function readCount(model: Model, key: string, min: number, refuse: (why: string) => Error): number | undefined {
  const text = model.getMetadata(key);
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < min) throw refuse(`${key} must be an integer >= ${min}, got '${text}'`);
  return n;
}
