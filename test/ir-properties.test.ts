// Properties of the IR over random graphs: they survive writing and reading unchanged, and the graph
// edits every pass is made of (insert, remove, rewire, reorder, dead-code elimination, splicing) keep the
// verifier satisfied. Graphs are built from a plain-data recipe so fast-check can shrink failures.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { type Attrs, float, GraphBuilder, ModelBuilder } from '../src/ir/builder.js';
import { Graph, type Node, replaceAllUses, type Value } from '../src/ir/graph.js';
import type { Model } from '../src/ir/model.js';
import { NameAuthority } from '../src/ir/names.js';
import { Tensor, type TensorStorage } from '../src/ir/tensor.js';
import { eliminateDeadCode, spliceGraph, toposort } from '../src/ir/transforms.js';
import { DataType, type IrType, tensorType } from '../src/ir/types.js';
import { verifyModel } from '../src/ir/verify.js';
import { concatChunks, decode, encode } from '../src/onnx/codec.js';
import { decodeModel, encodeModel, loadModel, saveModel } from '../src/onnx/file.js';
import { canonicalModel, expectSameModel, hex } from './helpers/canonical.js';

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

// ------------------------------------------------------------------------------------ recipes

type InitRecipe =
  | { kind: 'f32bits'; values: number[] }
  | { kind: 'f32' | 'f64'; values: number[]; typed: boolean }
  | { kind: 'i64'; values: bigint[]; typed: boolean };

type AttrRecipe = bigint | number | bigint[] | number[] | string;

const OPS = ['Add', 'Mul', 'Sub', 'Relu', 'Neg', 'MatMul', 'Concat', 'Split', 'Reshape', 'If'] as const;

interface NodeRecipe {
  op: (typeof OPS)[number];
  picks: number[];
  attrs: { value: AttrRecipe; asFloat: boolean }[];
  /** If only: a branch returns an outer value itself (no node), or holds an If of its own */
  direct: boolean;
  nested: boolean;
}

interface Recipe {
  inputs: number;
  initializers: InitRecipe[];
  nodes: NodeRecipe[];
  outputs: number[];
}

const int64 = fc.oneof(
  fc.constantFrom(INT64_MIN, INT64_MAX, 0n, -1n, 2n ** 53n, 2n ** 53n + 1n, -(2n ** 53n) - 1n, 2n ** 40n + 2n ** 33n),
  fc.bigInt({ min: INT64_MIN, max: INT64_MAX }),
);
const specialFloat = fc.oneof(fc.constantFrom(NaN, -0, 0, Infinity, -Infinity, 1e-45, 3.4028234663852886e38, 0.1), fc.float());
const values = <T>(arb: fc.Arbitrary<T>) => fc.array(arb, { minLength: 1, maxLength: 6 });

const initRecipe: fc.Arbitrary<InitRecipe> = fc.oneof(
  fc.record({ kind: fc.constant('f32bits' as const), values: values(fc.integer({ min: 0, max: 0xffffffff })) }),
  fc.record({ kind: fc.constant('f32' as const), values: values(specialFloat), typed: fc.boolean() }),
  fc.record({ kind: fc.constant('f64' as const), values: values(fc.double()), typed: fc.boolean() }),
  fc.record({ kind: fc.constant('i64' as const), values: values(int64), typed: fc.boolean() }),
);

const attrRecipe = fc.record({
  value: fc.oneof(
    int64,
    specialFloat,
    fc.array(int64, { maxLength: 4 }),
    values(specialFloat),
    fc.string({ maxLength: 6, unit: 'grapheme' }),
  ),
  asFloat: fc.boolean(),
});

const nodeRecipe: fc.Arbitrary<NodeRecipe> = fc.record({
  op: fc.constantFrom(...OPS),
  picks: fc.array(fc.nat(), { minLength: 3, maxLength: 3 }),
  attrs: fc.array(attrRecipe, { maxLength: 2 }),
  direct: fc.boolean(),
  nested: fc.boolean(),
});

const recipe: fc.Arbitrary<Recipe> = fc.record({
  inputs: fc.integer({ min: 1, max: 3 }),
  initializers: fc.array(initRecipe, { maxLength: 4 }),
  nodes: fc.array(nodeRecipe, { minLength: 1, maxLength: 10 }),
  outputs: fc.array(fc.nat(), { minLength: 1, maxLength: 3 }),
});

// ------------------------------------------------------------------------------------ building

const FLOAT_BATCH = tensorType(DataType.FLOAT, ['batch', 4]);

function tensorFor(r: InitRecipe): Tensor {
  const dims = [r.values.length];
  const typed = (storage: TensorStorage, dataType: number) => new Tensor('w', dataType, dims, storage);
  switch (r.kind) {
    case 'f32bits':
      return Tensor.fromArray('w', DataType.FLOAT, dims, Uint32Array.from(r.values));
    case 'f32':
      return r.typed
        ? typed({ kind: 'typed', field: 'float_data', values: Float32Array.from(r.values) }, DataType.FLOAT)
        : Tensor.fromArray('w', DataType.FLOAT, dims, Float32Array.from(r.values));
    case 'f64':
      return r.typed
        ? typed({ kind: 'typed', field: 'double_data', values: Float64Array.from(r.values) }, DataType.DOUBLE)
        : Tensor.fromArray('w', DataType.DOUBLE, dims, Float64Array.from(r.values));
    case 'i64':
      return r.typed
        ? typed({ kind: 'typed', field: 'int64_data', values: BigInt64Array.from(r.values) }, DataType.INT64)
        : Tensor.fromArray('w', DataType.INT64, dims, BigInt64Array.from(r.values));
  }
}

function attrsFor(recipes: NodeRecipe['attrs']): Attrs {
  const attrs: Attrs = {};
  recipes.forEach(({ value, asFloat }, i) => {
    const isNumbers = typeof value === 'number' || (Array.isArray(value) && value.length > 0 && typeof value[0] === 'number');
    attrs[`attr${i}`] = asFloat && isNumbers ? float(value as number | number[]) : value;
  });
  return attrs;
}

const typeOf = (v: Value): IrType =>
  v.type ?? (v.initializer ? tensorType(v.initializer.dataType, v.initializer.dims) : tensorType(DataType.FLOAT));

/** A model from a recipe: float inputs, a bool `cond`, weights, then each node reading earlier values. */
function buildModel(r: Recipe, opset = 17): Model {
  const b = new ModelBuilder(opset);
  const pool: Value[] = [];
  for (let i = 0; i < r.inputs; i++) pool.push(b.input(`x${i}`, FLOAT_BATCH));
  const cond = b.input('cond', tensorType(DataType.BOOL, []));
  for (const init of r.initializers) pool.push(b.initializer('w', tensorFor(init)));
  for (const n of r.nodes) pool.push(...addNode(b, n, pool, cond));
  const outputs = new Set(r.outputs.map((p) => pool[p % pool.length]));
  for (const v of outputs) b.output(v, undefined, typeOf(v));
  return b.model;
}

function addNode(b: GraphBuilder, n: NodeRecipe, pool: Value[], cond: Value): Value[] {
  const [p0, p1, p2] = n.picks.map((p) => pool[p % pool.length]);
  const attrs = attrsFor(n.attrs);
  switch (n.op) {
    case 'Relu':
    case 'Neg':
      return [b.op[n.op](p0, attrs)];
    case 'Concat':
      return [b.node('Concat', n.picks[2] % 2 ? [p0, p1, p2] : [p0, p1], { axis: 0, ...attrs }).outputs[0]!];
    case 'Split':
      return b.multi('Split', [p0], { axis: 0, ...attrs }, 2);
    case 'Reshape': {
      const shape = b.int64s('shape', [-1, 4]);
      return [shape, b.op.Reshape(p0, shape, attrs)];
    }
    case 'If':
      return [
        b.op.If(cond, {
          then_branch: branch(b, 'then', [p0, p1], n, cond, 0),
          else_branch: branch(b, 'else', [p1, p2], n, cond, 0),
          ...attrs,
        }),
      ];
    default:
      return [b.op[n.op](p0, p1, attrs)];
  }
}

/** An If branch reading `reads` from enclosing scopes; possibly returning one of them directly, or nesting an If. */
function branch(outer: GraphBuilder, name: string, reads: Value[], n: NodeRecipe, cond: Value, depth: number): Graph {
  const g = new Graph(outer.names.fresh(name));
  g.outerScope = outer.graph;
  const sb = new GraphBuilder(g, outer.names);
  let out: Value;
  if (n.nested && depth === 0) {
    out = sb.op.If(cond, {
      then_branch: branch(sb, 'then', reads, n, cond, 1),
      else_branch: branch(sb, 'else', [...reads].reverse(), n, cond, 1),
    });
  } else if (n.direct) out = reads[0];
  else out = depth % 2 ? sb.op.Identity(reads[0]) : sb.op.Add(reads[0], reads[1]);
  if (out.graph === g) out.type = FLOAT_BATCH;
  g.outputs = [out];
  return g;
}

// ------------------------------------------------------------------------------------ round trips

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-prop-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

type Via = 'encode' | 'save' | 'save-external';

function roundTrip(model: Model, via: Via): Model {
  if (via === 'encode') return decodeModel(encodeModel(model));
  const file = path.join(tmp, 'model.onnx');
  saveModel(model, file, { externalData: via === 'save' ? 'never' : 'always', sizeThreshold: 8 });
  return loadModel(file);
}

function roundTripHolds(r: Recipe, via: Via): void {
  const model = buildModel(r);
  const back = roundTrip(model, via);
  expectSameModel(back, model, { storageDetail: via !== 'save-external' });
  expect(verifyModel(back)).toEqual([]);
  const bytes = encodeModel(model);
  expect(hex(concatChunks(encode('ModelProto', decode('ModelProto', bytes))))).toBe(hex(bytes));
}

/** Property runs are cheap but many; this leaves room for a loaded machine and for shrinking. */
const PROPERTY_TIMEOUT = 60_000;

describe('random graphs', () => {
  it(
    'are valid as built',
    () => {
      fc.assert(
        fc.property(recipe, (r) => {
          expect(verifyModel(buildModel(r))).toEqual([]);
        }),
        { numRuns: 150 },
      );
    },
    PROPERTY_TIMEOUT,
  );

  it(
    'survive writing and reading unchanged (inline, saved, external data)',
    () => {
      fc.assert(fc.property(recipe, fc.constantFrom<Via>('encode', 'save', 'save-external'), roundTripHolds), { numRuns: 150 });
    },
    PROPERTY_TIMEOUT,
  );
});

// ------------------------------------------------------------------------------------ IR edits

/** Small deterministic generator, so one fast-check number drives every choice inside an edit. */
function rng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (((t ^ (t >>> 14)) >>> 0) % n) | 0;
  };
}

/**
 * Every value `v`'s computation reads, transitively, within `graph`: node inputs, and whatever the node's
 * subgraphs read from outside, whether as node inputs or as subgraph outputs.
 */
function upstream(v: Value, graph: Graph): Set<Value> {
  const seen = new Set<Value>();
  const stack = [v];
  while (stack.length) {
    const x = stack.pop()!;
    if (seen.has(x)) continue;
    seen.add(x);
    const p = x.producer;
    if (p && p.graph === graph) stack.push(...reads(p));
  }
  return seen;
}

function reads(node: Node): Value[] {
  const found = node.inputs.filter((v): v is Value => !!v);
  const visit = (g: Graph) => {
    for (const n of g.nodes) {
      found.push(...n.inputs.filter((v): v is Value => !!v));
      n.subgraphs().forEach(visit);
    }
    found.push(...g.outputs);
  };
  node.subgraphs().forEach(visit);
  return found;
}

function usedAnywhere(v: Value, graph: Graph): boolean {
  return v.useCount > 0 || graph.outputs.includes(v) || [...graph.subgraphsDeep()].some((g) => g.outputs.includes(v));
}

type Edit =
  | { kind: 'insert' | 'removeDead' | 'replace' | 'shuffle' | 'refuseRemove'; seed: number }
  | { kind: 'dce' }
  | { kind: 'splice'; seed: number; source: Recipe };

const edit: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({
    kind: fc.constantFrom('insert' as const, 'removeDead' as const, 'replace' as const, 'shuffle' as const, 'refuseRemove' as const),
    seed: fc.nat(),
  }),
  fc.record({ kind: fc.constant('dce' as const) }),
  fc.record({ kind: fc.constant('splice' as const), seed: fc.nat(), source: recipe }),
);

/** Applies one edit to the main graph; returns what it did, for failure messages. */
function applyEdit(model: Model, names: NameAuthority, e: Edit): string {
  const graph = model.graph;
  if (e.kind === 'dce') {
    const removed = eliminateDeadCode(graph);
    return `eliminateDeadCode removed ${removed.nodes} nodes, ${removed.initializers} initializers`;
  }
  const pick = rng(e.seed);
  const values = graph.localValues();
  switch (e.kind) {
    case 'insert': {
      const v = values[pick(values.length)];
      const after = v.producer ? graph.nodes.indexOf(v.producer) + 1 : 0;
      const at = after + pick(graph.nodes.length - after + 1);
      const before = graph.nodes[at];
      new GraphBuilder(graph, names, { before }).op.Relu(v);
      return `insert Relu(${v.name}) at ${at}`;
    }
    case 'removeDead': {
      const dead = graph.nodes.filter((n) => n.outputs.every((o) => !o || !usedAnywhere(o, graph)));
      if (!dead.length) return 'no dead node';
      const node = dead[pick(dead.length)];
      graph.removeNodes([node]);
      return `remove dead ${node}`;
    }
    case 'replace': {
      const from = values[pick(values.length)];
      const candidates = values.filter((to) => to !== from && !upstream(to, graph).has(from));
      if (!candidates.length) return 'nothing to replace with';
      const to = candidates[pick(candidates.length)];
      // A graph output takes the replacement's name; keeping the interface typed is the caller's job.
      if (graph.outputs.includes(from)) to.type ??= from.type;
      replaceAllUses(from, to);
      toposort(graph);
      return `replaceAllUses(${from.name}, ${to.name}) + toposort`;
    }
    case 'shuffle': {
      shuffle(graph, pick);
      toposort(graph);
      return 'shuffle + toposort';
    }
    case 'refuseRemove':
      return refuseRemove(model, pick);
    case 'splice': {
      const source = buildModel(e.source).graph;
      const inputs = new Map(source.inputs.map((input) => [input, values[pick(values.length)]]));
      const outs = spliceGraph(source, new GraphBuilder(graph, names), inputs);
      const out = outs[pick(outs.length)];
      out.type ??= typeOf(out);
      if (!graph.outputs.includes(out)) graph.outputs.push(out);
      return `splice ${source.nodes.length} nodes`;
    }
  }
}

function shuffle(graph: Graph, pick: (n: number) => number): void {
  const nodes = graph.nodes;
  for (let i = nodes.length - 1; i > 0; i--) {
    const j = pick(i + 1);
    [nodes[i], nodes[j]] = [nodes[j], nodes[i]];
  }
  for (const node of nodes) for (const sub of node.subgraphs()) shuffle(sub, pick);
}

/** removeNodes on a set including a node whose output is still needed: throws, and nothing changes. */
function refuseRemove(model: Model, pick: (n: number) => number): string {
  const graph = model.graph;
  const needed = graph.nodes.filter((n) => n.outputs.some((o) => o && (o.useCount > 0 || graph.outputs.includes(o))));
  if (!needed.length) return 'no needed node';
  const node = needed[pick(needed.length)];
  const others = graph.nodes.filter((n) => n !== node && pick(3) === 0);
  const set = [...others, node];
  // The removal is refused only when something outside the set needs one of its outputs.
  const removing = new Set(set);
  const neededOutside = set.some((n) =>
    n.outputs.some(
      (o) => o && (graph.outputs.includes(o) || o.uses().some((u) => !removing.has(u.node) && !insideAnyOf(u.node, removing))),
    ),
  );
  if (!neededOutside) return 'set is self-contained';
  const before = canonicalModel(model, { storageDetail: true });
  const useCounts = graph.localValues().map((v) => v.useCount);
  expect(() => graph.removeNodes(set)).toThrow(/^cannot remove /);
  expect(canonicalModel(model, { storageDetail: true })).toEqual(before);
  expect(graph.localValues().map((v) => v.useCount)).toEqual(useCounts);
  expect(set.every((n) => n.graph === graph)).toBe(true);
  return `refused removing ${set.length} nodes`;
}

function insideAnyOf(node: Node, nodes: Set<Node>): boolean {
  for (let g = node.graph; g; g = g.outerScope) for (const n of nodes) if (n.subgraphs().includes(g)) return true;
  return false;
}

function runEdits(r: Recipe, edits: Edit[]): void {
  const model = buildModel(r);
  const names = NameAuthority.forModel(model);
  const log: string[] = [];
  for (const e of edits) {
    log.push(applyEdit(model, names, e));
    expect(verifyModel(model), log.join('\n')).toEqual([]);
  }
  // What the edits left is still a model that survives a round trip.
  expectSameModel(decodeModel(encodeModel(model)), model, { storageDetail: true });
}

function dceHolds(r: Recipe): void {
  const model = buildModel(r);
  const outputsBefore = model.graph.outputs.map((v) => v.name);
  eliminateDeadCode(model.graph);
  expect(verifyModel(model)).toEqual([]);
  expect(model.graph.outputs.map((v) => v.name)).toEqual(outputsBefore);
  const live = new Set(model.graph.outputs.flatMap((o) => [...upstream(o, model.graph)]));
  for (const node of model.graph.nodes)
    expect(
      node.outputs.some((o) => o && live.has(o)),
      `${node} is dead`,
    ).toBe(true);
  for (const v of model.graph.initializers) expect(live.has(v) || v.useCount > 0, `${v.name} is unused`).toBe(true);
}

function toposortHolds(r: Recipe, seed: number): void {
  const model = buildModel(r);
  const nodes = new Set(model.graph.nodes);
  shuffle(model.graph, rng(seed));
  toposort(model.graph);
  expect(new Set(model.graph.nodes)).toEqual(nodes);
  expect(verifyModel(model)).toEqual([]);
}

describe('IR edits keep the verifier happy', () => {
  it(
    'after every edit of a random sequence',
    () => {
      fc.assert(fc.property(recipe, fc.array(edit, { minLength: 1, maxLength: 8 }), runEdits), { numRuns: 150 });
    },
    PROPERTY_TIMEOUT,
  );

  it(
    'eliminateDeadCode leaves only nodes some output depends on, and keeps every output',
    () => {
      fc.assert(fc.property(recipe, dceHolds), { numRuns: 150 });
    },
    PROPERTY_TIMEOUT,
  );

  it(
    'toposort restores any shuffled order and keeps every node',
    () => {
      fc.assert(fc.property(recipe, fc.nat(), toposortHolds), { numRuns: 150 });
    },
    PROPERTY_TIMEOUT,
  );
});

// ------------------------------------------------------------------------------------ regressions

/** Shrunk counterexamples the properties above found, kept as fixed cases (each failed before its fix). */
describe('regressions', () => {
  const node = (op: NodeRecipe['op'], picks: number[], extra: Partial<NodeRecipe> = {}): NodeRecipe => ({
    op,
    picks,
    attrs: [],
    direct: false,
    nested: false,
    ...extra,
  });

  it('codec: a 6- to 8-byte varint lost bits 32-34 (2^40 + 2^33 decoded as 2^40)', () => {
    const big = 2n ** 40n + 2n ** 33n;
    roundTripHolds(
      {
        inputs: 1,
        initializers: [{ kind: 'i64', values: [big], typed: true }],
        nodes: [node('Relu', [0, 0, 0], { attrs: [{ value: big, asFloat: false }] })],
        outputs: [0],
      },
      'encode',
    );
  });

  it('builder: a whole-number float beyond 2^53 became an INT attribute that int64 cannot hold', () => {
    const r: Recipe = {
      inputs: 1,
      initializers: [],
      nodes: [node('Add', [0, 0, 0], { attrs: [{ value: 3.4028234663852886e38, asFloat: false }] }), node('Add', [0, 0, 0])],
      outputs: [0],
    };
    roundTripHolds(r, 'encode');
    expect(buildModel(r).graph.nodes[0].attr('attr0')).toMatchObject({ type: 1, f: 3.4028234663852886e38 });
  });

  it('builder: a list holding 2^63 as a number became INTS, wrapping to -2^63', () => {
    runEdits({ inputs: 1, initializers: [], nodes: [node('Add', [0, 0, 0])], outputs: [0] }, [
      {
        kind: 'splice',
        seed: 0,
        source: {
          inputs: 1,
          initializers: [],
          nodes: [node('Add', [0, 0, 0], { attrs: [{ value: [2 ** 63, -0], asFloat: false }] }), node('Add', [0, 1897116947, 0])],
          outputs: [0],
        },
      },
      { kind: 'splice', seed: 0, source: { inputs: 1, initializers: [], nodes: [node('Add', [0, 0, 0])], outputs: [0] } },
    ]);
  });

  it('builder: an empty list became a GRAPHS attribute; bigints beyond int64 are refused', () => {
    const b = new ModelBuilder();
    const x = b.input('x');
    expect(b.node('Squeeze', [x], { axes: [] }).attr('axes')).toEqual({ name: 'axes', type: 7, ints: [] });
    expect(() => b.op.Relu(x, { big: 2n ** 63n })).toThrow(new RangeError('attribute value 9223372036854775808 does not fit in int64'));
  });

  it('toposort: an If whose branch returns an outer value directly was moved above its producer', () => {
    toposortHolds(
      { inputs: 1, initializers: [], nodes: [node('Add', [0, 0, 0]), node('If', [0, 419636795, 0], { direct: true })], outputs: [0] },
      379117631,
    );
  });

  it('eliminateDeadCode: removed the producer of a value a nested branch returns directly', () => {
    dceHolds({
      inputs: 1,
      initializers: [],
      nodes: [node('Add', [0, 0, 0]), node('If', [0, 0, 18337], { direct: true, nested: true }), node('Add', [0, 0, 0])],
      outputs: [1080285902],
    });
  });

  it('eliminateDeadCode: removed an initializer a branch returns directly', () => {
    dceHolds({
      inputs: 1,
      initializers: [{ kind: 'f32', values: [0], typed: false }],
      nodes: [node('If', [231288233, 0, 0], { direct: true }), node('Add', [0, 0, 0])],
      outputs: [2122888102, 0],
    });
  });

  it('replaceAllUses and removeNodes see a subgraph output that is an outer value', () => {
    const b = new ModelBuilder();
    const x = b.input('x', FLOAT_BATCH);
    const cond = b.input('cond', tensorType(DataType.BOOL, []));
    const relu = b.op.Relu(x);
    const thenBranch = new Graph('then');
    thenBranch.outputs = [relu];
    const elseBranch = new Graph('else');
    elseBranch.outputs = [x];
    b.output(b.op.If(cond, { then_branch: thenBranch, else_branch: elseBranch }), 'y', FLOAT_BATCH);
    expect(verifyModel(b.model)).toEqual([]);

    const before = canonicalModel(b.model);
    expect(() => b.graph.removeNodes([relu.producer!])).toThrow(
      `cannot remove Relu 'Relu': its output ${relu.name} is an output of subgraph then`,
    );
    expect(canonicalModel(b.model)).toEqual(before);

    const neg = b.op.Neg(x);
    replaceAllUses(relu, neg);
    expect(thenBranch.outputs).toEqual([neg]);
    toposort(b.graph);
    expect(eliminateDeadCode(b.graph).nodes).toBe(1); // the Relu, now unused
    expect(verifyModel(b.model)).toEqual([]);
  });
});
