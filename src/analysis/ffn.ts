// Feed-forward blocks: up-projection(s) from the block input, an elementwise activation, one
// down-projection. Gated variants (act(x·W1) * (x·W3)) are recognized too. The activation is named by
// evaluating the nodes between the projections on sample points and comparing with known functions,
// so any spelling of GELU (Erf form, tanh form, Mul/Div orders, fused ops) reads the same.
import type { Node, Value } from '../ir/graph.js';
import { EvaluationError, erf, evaluate, geluTanh, tensorOf } from './evaluate.js';
import { type Context, constantOf, dataUses, exclusiveCone, fail, type Match, nodeLabel, ok, skipBack } from './patterns.js';
import { isProjection, type Projection, projectionAt } from './projection.js';

export interface FfnBlock {
  /** the block's input (the normalized stream in pre-LN, the stream itself in post-LN) */
  input: Value;
  /** the block's result, after the down projection's bias, before the residual add */
  output: Value;
  up: Projection;
  /** gated FFN: the projection multiplied with the activation's result */
  gate?: Projection;
  down: Projection;
  activation: string;
  /** the nodes between the up and down projections */
  activationNodes: Node[];
  inner: number;
  nodes: Node[];
}

/** Elementwise ops an activation may be spelled with. */
const ELEMENTWISE = new Set([
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Pow',
  'Erf',
  'Tanh',
  'Sigmoid',
  'Relu',
  'Gelu',
  'FastGelu',
  'BiasGelu',
  'QuickGelu',
  'Identity',
  'Cast',
  'Dropout',
  'Sqrt',
  'Neg',
  'Exp',
  'Log',
  'Softplus',
  'HardSwish',
  'HardSigmoid',
  'Clip',
  'LeakyRelu',
  'Min',
  'Max',
  'Reciprocal',
  'Abs',
]);
const MAX_ACTIVATION_NODES = 40;

/** Match the feed-forward block reading `input`. */
export function matchFfn(input: Value, ctx: Context): Match<FfnBlock> {
  const ups = dataUses(input)
    .filter((u) => u.index === 0 && isProjection(u.node))
    .map((u) => projectionAt(u.node, ctx));
  if (ups.length === 0) {
    const users =
      dataUses(input)
        .map((u) => nodeLabel(u.node, ctx))
        .join(', ') || 'nothing';
    return fail(`no projection reads ${input.name} (it is used by ${users})`, input.producer ?? undefined);
  }
  if (ups.length > 2)
    return fail(`${ups.length} projections read ${input.name}; a feed-forward block has one (or two when gated)`, ups[2].matmul);
  const region = activationRegion(
    ups.map((u) => u.output),
    ctx,
  );
  if (!region.ok) return region;
  const { nodes: actNodes, down: downNode } = region.value;
  const down = projectionAt(downNode, ctx, true);
  const act = ups.length === 2 ? gatedActivation(ups, down.input, actNodes, ctx) : plainActivation(ups[0], down.input, actNodes, ctx);
  if (!act.ok) return act;
  const { gate, activation } = act.value;
  // a BiasGelu/FastGelu adds the up projection's bias itself
  const fused = actNodes[0] && fusedBiasInput(actNodes[0], act.value.up.output);
  const up = fused && !act.value.up.bias ? { ...act.value.up, bias: fused } : act.value.up;
  if (up.outFeatures === undefined) return fail(`cannot read the inner size from the weight of ${nodeLabel(up.matmul, ctx)}`, up.matmul);
  return ok({
    input,
    output: down.output,
    up,
    gate,
    down,
    activation,
    activationNodes: actNodes,
    inner: up.outFeatures,
    nodes: exclusiveCone([down.output], new Set([input]), ctx),
  });
}

/** The elementwise nodes after the up projection(s), up to the single down projection. */
function activationRegion(starts: Value[], ctx: Context): Match<{ nodes: Node[]; down: Node }> {
  const nodes = new Set<Node>();
  const downs = new Set<Node>();
  const frontier = [...starts];
  while (frontier.length) {
    const v = frontier.pop()!;
    for (const { node, index } of dataUses(v)) {
      if (nodes.has(node) || downs.has(node)) continue;
      if (isProjection(node) && index === 0) {
        downs.add(node);
        continue;
      }
      if (!ELEMENTWISE.has(node.opType) || (node.domain && node.domain !== 'com.microsoft')) {
        return fail(`${nodeLabel(node, ctx)} follows the up projection where an activation or the down projection was expected`, node);
      }
      nodes.add(node);
      if (nodes.size > MAX_ACTIVATION_NODES)
        return fail(`more than ${MAX_ACTIVATION_NODES} nodes after the up projection and no down projection`, node);
      for (const out of node.outputs) if (out) frontier.push(out);
    }
  }
  for (const node of nodes) {
    const foreign = node.inputs.find((i) => i && !isInside(i, nodes, starts) && !skipBack(i).constTensor());
    if (foreign)
      return fail(
        `${nodeLabel(node, ctx)} mixes ${foreign.name} into the feed-forward activation (a residual add before any down projection?)`,
        node,
      );
  }
  if (downs.size !== 1) {
    const where = starts.map((s) => s.name).join(', ');
    return fail(
      downs.size === 0 ? `no down projection after ${where}` : `${downs.size} projections after ${where}; expected one down projection`,
      [...downs][1],
    );
  }
  const ordered = [...nodes].sort((a, b) => ctx.order.get(a)! - ctx.order.get(b)!);
  return ok({ nodes: ordered, down: [...downs][0] });
}

function isInside(v: Value, nodes: ReadonlySet<Node>, starts: readonly Value[]): boolean {
  return starts.includes(v) || (!!v.producer && nodes.has(v.producer));
}

interface Activation {
  up: Projection;
  gate?: Projection;
  activation: string;
}

function plainActivation(up: Projection, actOut: Value, nodes: Node[], ctx: Context): Match<Activation> {
  const name = nameActivation(up.output, actOut, nodes, ctx);
  return name.ok ? ok({ up, activation: name.value }) : name;
}

/** act(x·W1) * (x·W3): the projection entering the final Mul directly is the gate. */
function gatedActivation(ups: Projection[], actOut: Value, nodes: Node[], ctx: Context): Match<Activation> {
  const mul = skipBack(actOut).producer;
  if (mul?.opType !== 'Mul')
    return fail(`two projections read the feed-forward input but ${actOut.name} is not their product`, mul ?? undefined);
  const direct = ups.findIndex((u) => mul.inputs.some((i) => i && skipBack(i) === skipBack(u.output)));
  if (direct < 0) return fail(`${nodeLabel(mul, ctx)} does not multiply by a projection directly (not a gated feed-forward block)`, mul);
  const gate = ups[direct];
  const up = ups[1 - direct];
  const actValue = mul.inputs.find((i) => i && skipBack(i) !== skipBack(gate.output))!;
  const inner = nodes.filter((n) => n !== mul);
  const name = nameActivation(up.output, actValue, inner, ctx);
  return name.ok ? ok({ up, gate, activation: name.value }) : name;
}

const REFERENCE: [string, (x: number) => number][] = [
  ['relu', (x) => Math.max(0, x)],
  ['gelu', (x) => 0.5 * x * (1 + erf(x / Math.SQRT2))],
  ['gelu_tanh', geluTanh],
  // x * sigmoid(x), also called SiLU
  ['swish', (x) => x / (1 + Math.exp(-x))],
  ['quick_gelu', (x) => x / (1 + Math.exp(-1.702 * x))],
  ['sigmoid', (x) => 1 / (1 + Math.exp(-x))],
  ['tanh', Math.tanh],
  ['hard_swish', (x) => x * Math.min(1, Math.max(0, x / 6 + 0.5))],
  ['identity', (x) => x],
];
const TOLERANCE = 2e-5;

/** Name the function computed from `x` to `y` by evaluating it on points in [-5, 5]. */
function nameActivation(x: Value, y: Value, nodes: Node[], ctx: Context): Match<string> {
  if (skipBack(y) === skipBack(x)) return ok('identity');
  const width = ctx.shapes.dim(x, -1)?.constant;
  if (width === undefined) return fail(`the width of ${x.name} is unknown, so its activation cannot be evaluated`);
  // at least 64 points in [-5, 5], as rows of the activation's width (constants broadcast per channel)
  const rows = Math.ceil(64 / width);
  const count = rows * width;
  const points = Array.from({ length: count }, (_, i) => -5 + (10 * ((i * 7919) % count)) / (count - 1));
  const rank = Math.max(2, ctx.shapes.rank(x) ?? 2);
  const dims = [...Array(rank - 2).fill(1), rows, width];
  // a fused op adding the up projection's bias first (BiasGelu, FastGelu) is fed points minus that bias
  const bias = fusedBias(nodes[0], x);
  const fed = bias ? points.map((p, i) => p - bias[i % bias.length]) : points;
  let out: Float64Array;
  try {
    out = evaluate([y], new Map([[x, tensorOf(dims, fed)]]))[0].data;
  } catch (error) {
    if (!(error instanceof EvaluationError)) throw error;
    return fail(`the activation ${nodes.map((n) => n.opType).join('/')} could not be evaluated: ${error.message}`, nodes[0]);
  }
  if (out.length !== points.length) return fail(`the activation changes the shape of ${x.name}`, nodes[0]);
  for (const [name, f] of REFERENCE) {
    if (points.every((p, i) => Math.abs(out[i] - f(p)) <= TOLERANCE * Math.max(1, Math.abs(f(p))))) return ok(name);
  }
  return ok(`unknown(${[...new Set(nodes.map((n) => n.opType))].join('/')})`);
}

/** The bias input of a fused activation (BiasGelu, FastGelu) applied to `x`. */
function fusedBiasInput(node: Node, x: Value): Value | undefined {
  if (node.domain !== 'com.microsoft' || !FUSED_BIAS_OPS.has(node.opType) || node.inputs[0] !== x) return undefined;
  return node.inputs[1] ?? undefined;
}

/** The bias a fused activation adds to its input before the function, when it is a constant. */
function fusedBias(first: Node | undefined, x: Value): Float32Array | undefined {
  return first ? constantOf(fusedBiasInput(first, x))?.toFloat32() : undefined;
}

const FUSED_BIAS_OPS = new Set(['BiasGelu', 'FastGelu']);
