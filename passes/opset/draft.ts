// The plan of one node's conversion, kept apart from the graph: a Draft is a node as an adapter sees it
// (op, version, inputs, attributes, outputs), detached, so that every node of the model can be carried
// through every opset step and checked before the graph changes at all. A draft's inputs and outputs are
// the graph's own values, or new ones: a `Fresh` value that a new node computes, or a `NewConstant`.

import type { Node } from '../../src/ir/graph.js';
import { type Attribute, AttributeType, type Value } from '../../src/ir/graph.js';
import type { Tensor } from '../../src/ir/tensor.js';

/** A value that does not exist yet: an output of a node the conversion adds. */
export class Fresh {
  constructor(
    /** the last part of its name */
    readonly hint: string,
    /** what adapters may ask of it before it exists */
    readonly known: { rank?: number; dtype?: number } = {},
  ) {}
}

/** A constant the conversion adds (an initializer, or a Constant node where initializers cannot go). */
export class NewConstant {
  constructor(
    readonly tensor: Tensor,
    readonly hint: string,
  ) {}
}

export type Ref = Value | Fresh | NewConstant | null;
export type OutRef = Value | Fresh | null;

const utf8 = new TextDecoder();
const encoder = new TextEncoder();

export class Draft {
  /** set by any change, so a node whose every step is compatible stays untouched */
  changed = false;
  /** what an earlier step established that a later one needs (Upsample's scales are >= 1) */
  readonly facts = new Set<string>();

  constructor(
    public op: string,
    /** the version of `op` this draft is written for */
    public version: number,
    public inputs: Ref[],
    public outputs: OutRef[],
    /** copies of the list (the Attribute objects are shared until replaced, never edited) */
    public attributes: Attribute[],
    /** the graph node this draft becomes; absent for nodes the conversion adds */
    readonly origin?: Node,
  ) {}

  static of(node: Node, version: number): Draft {
    return new Draft(node.opType, version, [...node.inputs], [...node.outputs], [...node.attributes], node);
  }

  attr(name: string): Attribute | undefined {
    return this.attributes.find((a) => a.name === name);
  }

  has(name: string): boolean {
    return this.attr(name) !== undefined;
  }

  int(name: string, fallback: number): number {
    const a = this.attr(name);
    return a?.i === undefined ? fallback : Number(a.i);
  }

  ints(name: string): number[] | undefined {
    return this.attr(name)?.ints?.map(Number);
  }

  float(name: string, fallback: number): number {
    const a = this.attr(name);
    return a?.f === undefined ? fallback : a.f;
  }

  floats(name: string): number[] | undefined {
    return this.attr(name)?.floats;
  }

  string(name: string, fallback: string): string {
    const a = this.attr(name);
    return a?.s === undefined ? fallback : utf8.decode(a.s);
  }

  /** Replace (or add) an attribute. */
  set(attribute: Attribute): void {
    const at = this.attributes.findIndex((a) => a.name === attribute.name);
    if (at >= 0) this.attributes[at] = attribute;
    else this.attributes.push(attribute);
    this.changed = true;
  }

  setInt(name: string, value: number): void {
    this.set({ name, type: AttributeType.INT, i: BigInt(value) });
  }

  setInts(name: string, values: number[]): void {
    this.set({ name, type: AttributeType.INTS, ints: values.map((v) => BigInt(v)) });
  }

  setFloat(name: string, value: number): void {
    this.set({ name, type: AttributeType.FLOAT, f: value });
  }

  setString(name: string, value: string): void {
    this.set({ name, type: AttributeType.STRING, s: encoder.encode(value) });
  }

  remove(...names: string[]): void {
    const kept = this.attributes.filter((a) => !names.includes(a.name));
    if (kept.length !== this.attributes.length) this.changed = true;
    this.attributes = kept;
  }

  setInput(index: number, ref: Ref): void {
    while (this.inputs.length <= index) this.inputs.push(null);
    this.inputs[index] = ref;
    while (this.inputs.length && this.inputs[this.inputs.length - 1] === null) this.inputs.pop();
    this.changed = true;
  }

  setOutput(index: number, ref: OutRef): void {
    while (this.outputs.length <= index) this.outputs.push(null);
    this.outputs[index] = ref;
    while (this.outputs.length && this.outputs[this.outputs.length - 1] === null) this.outputs.pop();
    this.changed = true;
  }

  rename(op: string, version: number): void {
    this.op = op;
    this.version = version;
    this.changed = true;
  }
}
