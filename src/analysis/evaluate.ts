// A small numeric interpreter for the side computations that decide what a pattern means: a mask
// (is it a causal triangle?) or an activation (which function is it?). It runs only the cone of the
// requested values on tiny concrete inputs, in float64, and refuses anything large or unknown, so a
// question it cannot answer comes back as a reason instead of a guess.
import type { Node, Value } from '../ir/graph.js';
import { DataType } from '../ir/types.js';

export interface NumTensor {
  dims: number[];
  data: Float64Array;
  dtype: number;
}

export class EvaluationError extends Error {}

const MAX_ELEMENTS = 1 << 20;
const MAX_NODES = 600;

export function tensorOf(dims: number[], data: ArrayLike<number>, dtype: number = DataType.FLOAT): NumTensor {
  return { dims, data: Float64Array.from(data), dtype };
}

const sizeOf = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);

export interface EvaluateOptions {
  /**
   * The shape of a value when it is known without computing the value: Shape nodes then read it
   * instead of evaluating their input (a mask sized from the hidden states needs only their shape).
   */
  shapeOf?: (v: Value) => number[] | undefined;
}

/**
 * Evaluate `targets`, reading `feeds` for given values and constants for weights; everything else is
 * computed from its producer. Throws EvaluationError naming the node it could not evaluate.
 */
export function evaluate(targets: readonly Value[], feeds: ReadonlyMap<Value, NumTensor>, options: EvaluateOptions = {}): NumTensor[] {
  const memo = new Map<Value, NumTensor>(feeds);
  let visited = 0;
  const get = (v: Value | null | undefined): NumTensor => {
    if (!v) throw new EvaluationError('missing optional input');
    const known = memo.get(v);
    if (known) return known;
    const c = v.constTensor();
    if (c) {
      if (c.size > MAX_ELEMENTS) throw new EvaluationError(`constant ${v.name} is too large to evaluate`);
      const t = tensorOf(
        c.dims,
        c.dataType === DataType.INT64 || c.dataType === DataType.UINT64 ? c.toBigInts().map(Number) : c.toFloat32(),
        c.dataType,
      );
      memo.set(v, t);
      return t;
    }
    const p = v.producer;
    if (!p) throw new EvaluationError(`value ${v.name} has no producer and no feed`);
    const oracle = p.opType === 'Shape' && !p.domain && p.inputs[0] ? options.shapeOf?.(p.inputs[0]) : undefined;
    if (oracle) {
      const rank = oracle.length;
      const norm = (a: number) => Math.min(Math.max(a < 0 ? a + rank : a, 0), rank);
      const dims = oracle.slice(norm(p.attrInt('start', 0)), norm(p.attrInt('end', rank)));
      const t = tensorOf([dims.length], dims, DataType.INT64);
      memo.set(v, t);
      return t;
    }
    if (++visited > MAX_NODES) throw new EvaluationError('the computation is too large to evaluate');
    const outs = run(p, get);
    p.outputs.forEach((o, i) => o && outs[i] && memo.set(o, outs[i]));
    const out = memo.get(v);
    if (!out) throw new EvaluationError(`${p} did not produce ${v.name}`);
    return out;
  };
  return targets.map(get);
}

type Get = (v: Value | null | undefined) => NumTensor;

const UNARY: Record<string, (x: number) => number> = {
  Identity: (x) => x,
  Neg: (x) => -x,
  Abs: Math.abs,
  Exp: Math.exp,
  Log: Math.log,
  Sqrt: Math.sqrt,
  Reciprocal: (x) => 1 / x,
  Floor: Math.floor,
  Ceil: Math.ceil,
  Round: roundHalfEven,
  Sign: Math.sign,
  Tanh: Math.tanh,
  Sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  Relu: (x) => Math.max(0, x),
  Erf: erf,
  Not: (x) => (x ? 0 : 1),
  Sin: Math.sin,
  Cos: Math.cos,
  Softplus: (x) => Math.log1p(Math.exp(x)),
  Dropout: (x) => x,
  Gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  QuickGelu: (x) => x / (1 + Math.exp(-1.702 * x)),
  HardSwish: (x) => x * Math.min(1, Math.max(0, x / 6 + 0.5)),
  HardSigmoid: (x) => Math.min(1, Math.max(0, 0.2 * x + 0.5)),
};
const BINARY: Record<string, (a: number, b: number) => number> = {
  Add: (a, b) => a + b,
  Sub: (a, b) => a - b,
  Mul: (a, b) => a * b,
  Div: (a, b) => a / b,
  Pow: Math.pow,
  Min: Math.min,
  Max: Math.max,
  Equal: (a, b) => +(a === b),
  Less: (a, b) => +(a < b),
  Greater: (a, b) => +(a > b),
  LessOrEqual: (a, b) => +(a <= b),
  GreaterOrEqual: (a, b) => +(a >= b),
  And: (a, b) => +(!!a && !!b),
  Or: (a, b) => +(!!a || !!b),
  Xor: (a, b) => +(!!a !== !!b),
  Mod: (a, b) => a - Math.floor(a / b) * b,
};
const BOOL_OPS = new Set(['Equal', 'Less', 'Greater', 'LessOrEqual', 'GreaterOrEqual', 'And', 'Or', 'Xor', 'Not']);

function run(node: Node, get: Get): NumTensor[] {
  if (node.domain && node.domain !== 'com.microsoft' && node.domain !== 'ai.onnx') throw new EvaluationError(`cannot evaluate ${node}`);
  const op = node.opType;
  const x = () => get(node.inputs[0]);
  if (op === 'Gelu' && node.attr('approximate') && node.attrString('approximate') === 'tanh') return [map(x(), geluTanh)];
  if (op in UNARY && node.inputs.length <= 1) {
    const t = x();
    return [map(t, UNARY[op], BOOL_OPS.has(op) ? DataType.BOOL : t.dtype)];
  }
  if (op in BINARY) {
    const inputs = node.inputs.map(get);
    const dtype = BOOL_OPS.has(op) ? DataType.BOOL : inputs[0].dtype;
    const f = op === 'Div' && isInt(dtype) ? (a: number, b: number) => Math.trunc(a / b) : BINARY[op];
    return [inputs.slice(1).reduce((acc, t) => broadcast([acc, t], (v) => f(v[0], v[1]), dtype), inputs[0])];
  }
  switch (op) {
    case 'Constant': {
      const t = node.attr('value')?.t;
      if (!t) throw new EvaluationError(`${node}: only tensor-valued Constant nodes are evaluated`);
      return [tensorOf(t.dims, t.dataType === DataType.INT64 ? t.toBigInts().map(Number) : t.toFloat32(), t.dataType)];
    }
    case 'Cast': {
      const to = node.attrInt('to');
      const f = to === DataType.BOOL ? (v: number) => +(v !== 0) : isInt(to) ? Math.trunc : (v: number) => v;
      return [map(x(), f, to)];
    }
    case 'Where': {
      const [c, a, b] = node.inputs.map(get);
      return [broadcast([c, a, b], (v) => (v[0] ? v[1] : v[2]), a.dtype)];
    }
    case 'Clip': {
      const lo = node.inputs[1] ? get(node.inputs[1]).data[0] : node.attrFloat('min', -Infinity);
      const hi = node.inputs[2] ? get(node.inputs[2]).data[0] : node.attrFloat('max', Infinity);
      return [map(x(), (v) => Math.min(hi, Math.max(lo, v)))];
    }
    case 'LeakyRelu': {
      const alpha = node.attrFloat('alpha', 0.01);
      return [map(x(), (v) => (v < 0 ? alpha * v : v))];
    }
    case 'FastGelu':
    case 'BiasGelu': {
      const biased = node.inputs[1] ? broadcast([x(), get(node.inputs[1])], (v) => v[0] + v[1], DataType.FLOAT) : x();
      return [map(biased, op === 'FastGelu' ? geluTanh : UNARY.Gelu)];
    }
    case 'Shape': {
      const dims = x().dims;
      const rank = dims.length;
      const norm = (a: number) => Math.min(Math.max(a < 0 ? a + rank : a, 0), rank);
      const picked = dims.slice(norm(node.attrInt('start', 0)), norm(node.attrInt('end', rank)));
      return [tensorOf([picked.length], picked, DataType.INT64)];
    }
    case 'Size':
      return [tensorOf([], [sizeOf(x().dims)], DataType.INT64)];
    case 'Unsqueeze':
    case 'Squeeze':
    case 'Reshape':
    case 'Flatten':
      return [reshapeLike(node, x(), get)];
    case 'Transpose':
      return [transpose(x(), node.attrInts('perm', [...Array(x().dims.length).keys()].reverse()))];
    case 'Expand': {
      const t = x();
      const target = [...get(node.inputs[1]).data];
      if (sizeOf(target) > MAX_ELEMENTS) throw new EvaluationError(`${node}: expanded tensor too large to evaluate`);
      const shapeOnly = { dims: target, data: new Float64Array(sizeOf(target)), dtype: t.dtype };
      return [broadcast([t, shapeOnly], (v) => v[0], t.dtype)];
    }
    case 'ConstantOfShape': {
      const dims = [...x().data];
      const fill = node.attr('value')?.t;
      const v = fill ? fill.toNumbers()[0] : 0;
      return [checked({ dims, data: new Float64Array(sizeOf(dims)).fill(v), dtype: fill?.dataType ?? DataType.FLOAT })];
    }
    case 'Range': {
      const [s, l, d] = node.inputs.map((v) => get(v).data[0]);
      const n = Math.max(0, Math.ceil((l - s) / d));
      if (n > MAX_ELEMENTS) throw new EvaluationError(`${node}: range too long`);
      return [
        tensorOf(
          [n],
          Array.from({ length: n }, (_, i) => s + i * d),
          get(node.inputs[0]).dtype,
        ),
      ];
    }
    case 'Gather':
      return [gather(x(), get(node.inputs[1]), node.attrInt('axis', 0))];
    case 'Concat':
      return [concat(node.inputs.map(get), node.attrInt('axis'))];
    case 'Slice':
      return [slice(node, x(), get)];
    case 'Trilu':
      return [trilu(x(), node.inputs[1] ? get(node.inputs[1]).data[0] : 0, node.attrInt('upper', 1) === 1)];
    case 'Tile': {
      const reps = [...get(node.inputs[1]).data];
      let t = x();
      reps.forEach((r, axis) => (t = concat(Array(r).fill(t), axis)));
      return [t];
    }
    default:
      throw new EvaluationError(`cannot evaluate ${node}`);
  }
}

function isInt(dtype: number): boolean {
  return dtype !== DataType.FLOAT && dtype !== DataType.DOUBLE && dtype !== DataType.FLOAT16 && dtype !== DataType.BFLOAT16;
}

function checked(t: NumTensor): NumTensor {
  if (t.data.length > MAX_ELEMENTS) throw new EvaluationError('intermediate tensor too large to evaluate');
  return t;
}

function map(t: NumTensor, f: (v: number) => number, dtype = t.dtype): NumTensor {
  return { dims: t.dims, data: t.data.map(f), dtype };
}

function strides(dims: readonly number[]): number[] {
  const out = Array(dims.length).fill(1);
  for (let i = dims.length - 2; i >= 0; i--) out[i] = out[i + 1] * dims[i + 1];
  return out;
}

/** Numpy-style broadcast of several tensors through `f`. */
function broadcast(ts: NumTensor[], f: (values: number[]) => number, dtype: number): NumTensor {
  const rank = Math.max(...ts.map((t) => t.dims.length));
  const dims: number[] = [];
  for (let i = 0; i < rank; i++) {
    let d = 1;
    for (const t of ts) {
      const k = i - (rank - t.dims.length);
      const td = k >= 0 ? t.dims[k] : 1;
      if (td !== 1) {
        if (d !== 1 && d !== td) throw new EvaluationError(`shapes [${ts.map((u) => u.dims.join('x')).join('], [')}] do not broadcast`);
        d = td;
      }
    }
    dims.push(d);
  }
  const size = sizeOf(dims);
  if (size > MAX_ELEMENTS) throw new EvaluationError('broadcast result too large to evaluate');
  if (ts.every((t) => t.data.length === 1 || t.data.length === size)) {
    // fast path: every operand is a scalar or already full size
    const data = new Float64Array(size);
    const args = new Array<number>(ts.length);
    for (let flat = 0; flat < size; flat++) {
      for (let j = 0; j < ts.length; j++) args[j] = ts[j].data.length === 1 ? ts[j].data[0] : ts[j].data[flat];
      data[flat] = f(args);
    }
    return { dims, data, dtype };
  }
  const outStrides = strides(dims);
  const inStrides = ts.map((t) => {
    const s = strides(t.dims);
    return dims.map((_, i) => {
      const k = i - (rank - t.dims.length);
      return k >= 0 && t.dims[k] !== 1 ? s[k] : 0;
    });
  });
  const data = new Float64Array(size);
  const args = new Array<number>(ts.length);
  for (let flat = 0; flat < size; flat++) {
    for (let j = 0; j < ts.length; j++) {
      let off = 0;
      let rest = flat;
      for (let i = 0; i < rank; i++) {
        const idx = Math.floor(rest / outStrides[i]);
        rest -= idx * outStrides[i];
        off += idx * inStrides[j][i];
      }
      args[j] = ts[j].data[off];
    }
    data[flat] = f(args);
  }
  return { dims, data, dtype };
}

function reshapeLike(node: Node, t: NumTensor, get: Get): NumTensor {
  const rank = t.dims.length;
  const op = node.opType;
  const axesAttr = node.attr('axes')?.ints?.map(Number);
  const axes = axesAttr ?? (node.inputs[1] ? [...get(node.inputs[1]).data] : undefined);
  let dims: number[];
  if (op === 'Unsqueeze') {
    const out = rank + axes!.length;
    const at = new Set(axes!.map((a) => (a < 0 ? a + out : a)));
    dims = [];
    for (let i = 0, k = 0; i < out; i++) dims.push(at.has(i) ? 1 : t.dims[k++]);
  } else if (op === 'Squeeze') {
    const drop = new Set((axes ?? t.dims.flatMap((d, i) => (d === 1 ? [i] : []))).map((a) => (a < 0 ? a + rank : a)));
    dims = t.dims.filter((_, i) => !drop.has(i));
  } else if (op === 'Flatten') {
    const axis = node.attrInt('axis', 1);
    const a = axis < 0 ? axis + rank : axis;
    dims = [sizeOf(t.dims.slice(0, a)), sizeOf(t.dims.slice(a))];
  } else {
    const target = [...get(node.inputs[1]).data];
    const allowZero = node.attrInt('allowzero', 0) === 1;
    dims = target.map((d, i) => (d === 0 && !allowZero ? t.dims[i] : d));
    const at = dims.indexOf(-1);
    if (at >= 0) dims[at] = sizeOf(t.dims) / sizeOf(dims.filter((_, i) => i !== at));
  }
  if (sizeOf(dims) !== t.data.length) throw new EvaluationError(`${node}: cannot reshape ${t.dims.join('x')} to ${dims.join('x')}`);
  return { dims, data: t.data, dtype: t.dtype };
}

function transpose(t: NumTensor, perm: number[]): NumTensor {
  const dims = perm.map((p) => t.dims[p]);
  const inS = strides(t.dims);
  const outS = strides(dims);
  const data = new Float64Array(t.data.length);
  for (let flat = 0; flat < data.length; flat++) {
    let rest = flat;
    let off = 0;
    for (let i = 0; i < dims.length; i++) {
      const idx = Math.floor(rest / outS[i]);
      rest -= idx * outS[i];
      off += idx * inS[perm[i]];
    }
    data[flat] = t.data[off];
  }
  return { dims, data, dtype: t.dtype };
}

function gather(t: NumTensor, indices: NumTensor, axisAttr: number): NumTensor {
  const axis = axisAttr < 0 ? axisAttr + t.dims.length : axisAttr;
  const outer = sizeOf(t.dims.slice(0, axis));
  const inner = sizeOf(t.dims.slice(axis + 1));
  const n = t.dims[axis];
  const dims = [...t.dims.slice(0, axis), ...indices.dims, ...t.dims.slice(axis + 1)];
  const data = checked({ dims, data: new Float64Array(sizeOf(dims)), dtype: t.dtype }).data;
  let w = 0;
  for (let o = 0; o < outer; o++) {
    for (const raw of indices.data) {
      const i = raw < 0 ? raw + n : raw;
      if (i < 0 || i >= n) throw new EvaluationError(`gather index ${raw} out of range ${n}`);
      for (let k = 0; k < inner; k++) data[w++] = t.data[(o * n + i) * inner + k];
    }
  }
  return { dims, data, dtype: t.dtype };
}

function concat(ts: NumTensor[], axisAttr: number): NumTensor {
  const rank = ts[0].dims.length;
  const axis = axisAttr < 0 ? axisAttr + rank : axisAttr;
  const dims = [...ts[0].dims];
  dims[axis] = ts.reduce((s, t) => s + t.dims[axis], 0);
  const outer = sizeOf(dims.slice(0, axis));
  const data = checked({ dims, data: new Float64Array(sizeOf(dims)), dtype: ts[0].dtype }).data;
  let w = 0;
  for (let o = 0; o < outer; o++) {
    for (const t of ts) {
      const chunk = sizeOf(t.dims.slice(axis));
      data.set(t.data.subarray(o * chunk, (o + 1) * chunk), w);
      w += chunk;
    }
  }
  return { dims, data, dtype: ts[0].dtype };
}

function slice(node: Node, t: NumTensor, get: Get): NumTensor {
  const old = node.attr('starts') !== undefined;
  const starts = old ? node.attrInts('starts') : [...get(node.inputs[1]).data];
  const ends = old ? node.attrInts('ends') : [...get(node.inputs[2]).data];
  const axes = old
    ? node.attrInts(
        'axes',
        starts.map((_, i) => i),
      )
    : node.inputs[3]
      ? [...get(node.inputs[3]).data]
      : starts.map((_, i) => i);
  const steps = !old && node.inputs[4] ? [...get(node.inputs[4]).data] : starts.map(() => 1);
  const rank = t.dims.length;
  const picks = t.dims.map((n) => [...Array(n).keys()]);
  axes.forEach((a, k) => {
    const axis = a < 0 ? a + rank : a;
    const n = t.dims[axis];
    const step = steps[k];
    const fix = (i: number, lo: number, hi: number) => Math.min(Math.max(i < 0 ? i + n : i, lo), hi);
    const out: number[] = [];
    if (step > 0) for (let i = fix(starts[k], 0, n); i < fix(ends[k], 0, n); i += step) out.push(i);
    else for (let i = fix(starts[k], -1, n - 1); i > fix(ends[k], -1, n - 1); i += step) out.push(i);
    picks[axis] = out;
  });
  const dims = picks.map((p) => p.length);
  const inS = strides(t.dims);
  const outS = strides(dims);
  const data = new Float64Array(sizeOf(dims));
  for (let flat = 0; flat < data.length; flat++) {
    let rest = flat;
    let off = 0;
    for (let i = 0; i < rank; i++) {
      const idx = Math.floor(rest / outS[i]);
      rest -= idx * outS[i];
      off += picks[i][idx] * inS[i];
    }
    data[flat] = t.data[off];
  }
  return { dims, data, dtype: t.dtype };
}

function trilu(t: NumTensor, k: number, upper: boolean): NumTensor {
  const rank = t.dims.length;
  const rows = t.dims[rank - 2];
  const cols = t.dims[rank - 1];
  const data = t.data.map((v, flat) => {
    const j = flat % cols;
    const i = Math.floor(flat / cols) % rows;
    const keep = upper ? j - i >= k : j - i <= k;
    return keep ? v : 0;
  });
  return { dims: t.dims, data, dtype: t.dtype };
}

function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
}

/** erf to about 1e-12 (series near 0, continued fraction complement further out). */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let sum = 0;
    let term = ax;
    for (let n = 0; n < 80; n++) {
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17) break;
      term *= (-ax * ax) / (n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc by Lentz's continued fraction
  let f = ax;
  let c = ax;
  let d = 0;
  for (let n = 1; n < 200; n++) {
    const a = n / 2;
    d = ax + a * d;
    d = d === 0 ? 1e-300 : 1 / d;
    c = ax + a / c;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  const erfc = Math.exp(-ax * ax) / (f * Math.sqrt(Math.PI));
  return Math.sign(x) * (1 - erfc);
}
