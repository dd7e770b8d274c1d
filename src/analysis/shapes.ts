// Shape inference with symbolic dims. Besides shapes, small integer tensors (the shape vectors that
// exporters build with Shape/Gather/Unsqueeze/Concat) are tracked element by element as symbolic
// values, so that `Reshape(x, Concat(Gather(Shape(x), 0), Gather(Shape(x), 1), 4, 16))` comes out as
// [batch, seq, 4, 16] rather than four unknowns.
import { type Graph, MalformedNodeError, type Node, type Value } from '../ir/graph.js';
import { DataType, isTensorType } from '../ir/types.js';
import { Expr, product, type SymDim } from './symbolic.js';

export interface ValueInfo {
  dtype?: number;
  /** undefined: rank unknown; an undefined entry: that dim unknown */
  shape?: SymDim[];
  /** element values (row-major) of a small integer tensor */
  value?: SymDim[];
}

/** Largest integer tensor whose elements are tracked. */
const MAX_TRACKED = 64;

export class ShapeTable {
  private readonly infos = new Map<Value, ValueInfo>();

  get(v: Value | null | undefined): ValueInfo {
    return (v && this.infos.get(v)) || {};
  }

  set(v: Value, info: ValueInfo): void {
    this.infos.set(v, info);
  }

  has(v: Value): boolean {
    return this.infos.has(v);
  }

  shape(v: Value | null | undefined): SymDim[] | undefined {
    return this.get(v).shape;
  }

  rank(v: Value | null | undefined): number | undefined {
    return this.shape(v)?.length;
  }

  /** Dim `axis` (negative counts from the end). */
  dim(v: Value | null | undefined, axis: number): SymDim {
    const s = this.shape(v);
    if (!s) return undefined;
    return s[axis < 0 ? s.length + axis : axis];
  }

  /** The elements as plain integers, when every one is a known number. */
  ints(v: Value | null | undefined): number[] | undefined {
    const value = this.get(v).value;
    if (!value) return undefined;
    const out: number[] = [];
    for (const e of value) {
      const c = e?.constant;
      if (c === undefined) return undefined;
      out.push(c);
    }
    return out;
  }
}

/**
 * Infer every value's type in `graph` (nodes must be in topological order, as the verifier requires). A graph
 * input already in `table` keeps its entry: a caller may know more than the declared type (two inputs'
 * lengths related by a contract).
 */
export function inferShapes(graph: Graph, table = new ShapeTable()): ShapeTable {
  for (const v of graph.inputs) if (!table.has(v)) table.set(v, declared(v));
  for (const v of graph.initializers) table.set(v, fromTensorValue(v) ?? declared(v));
  for (const node of graph.nodes) {
    let outs: (ValueInfo | undefined)[] = [];
    try {
      outs = inferNode(node, table);
    } catch (error) {
      // a malformed node leaves its outputs to their declared types; anything else is a bug
      if (!(error instanceof MalformedNodeError)) throw error;
    }
    node.outputs.forEach((v, i) => {
      if (!v) return;
      const inferred = outs[i];
      const fallback = declared(v);
      table.set(v, {
        dtype: inferred?.dtype ?? fallback.dtype,
        shape: inferred?.shape ?? fallback.shape,
        value: inferred?.value,
      });
    });
  }
  return table;
}

function declared(v: Value): ValueInfo {
  if (!isTensorType(v.type)) return {};
  const shape = v.type.shape?.map(
    (d, i): SymDim => (d.value !== undefined ? Expr.num(d.value) : d.param ? Expr.atom(d.param) : Expr.atom(`${v.name}.${i}`)),
  );
  return { dtype: v.type.elemType, shape };
}

function fromTensorValue(v: Value): ValueInfo | undefined {
  const t = v.constTensor();
  if (!t) return undefined;
  const info: ValueInfo = { dtype: t.dataType, shape: t.dims.map((d) => Expr.num(d)) };
  if (isIntType(t.dataType) && t.size <= MAX_TRACKED) info.value = t.toBigInts().map(clampedInt);
  return info;
}

/** An int64 element as a number; beyond 2^53 (INT64_MAX as "to the end" in Slice) clamped to +-2^53. */
function clampedInt(b: bigint): Expr {
  const limit = 2n ** 53n;
  return Expr.num(Number(b > limit ? limit : b < -limit ? -limit : b));
}

export function isIntType(dtype: number | undefined): boolean {
  return (
    dtype === DataType.INT64 ||
    dtype === DataType.INT32 ||
    dtype === DataType.INT16 ||
    dtype === DataType.INT8 ||
    dtype === DataType.UINT8 ||
    dtype === DataType.UINT16 ||
    dtype === DataType.UINT32 ||
    dtype === DataType.UINT64 ||
    dtype === DataType.BOOL
  );
}

const num = (n: number) => Expr.num(n);
const normAxis = (axis: number, rank: number) => (axis < 0 ? axis + rank : axis);

/** ONNX Runtime's contrib ops live in this domain. */
const MS = 'com.microsoft.';

/**
 * The op as inference knows it: `MatMul` for the default domain, `com.microsoft.FusedMatMul` for ONNX
 * Runtime's contrib ops; ops of other domains are unknown (a custom `Add` gets no ONNX broadcasting).
 */
function opKey(node: Node): string {
  const domain = node.domain ?? '';
  return domain === '' || domain === 'ai.onnx' ? node.opType : `${domain}.${node.opType}`;
}

// ORT registers LayerNormalization and SimplifiedLayerNormalization in the default domain at every opset.
const SAME_SHAPE = new Set([
  'Identity',
  'Relu',
  'Sigmoid',
  'Tanh',
  'Erf',
  'Sqrt',
  'Reciprocal',
  'Neg',
  'Abs',
  'Exp',
  'Log',
  'Softmax',
  'LogSoftmax',
  'Hardmax',
  'Not',
  'Floor',
  'Ceil',
  'Round',
  'Sign',
  'Gelu',
  'HardSigmoid',
  'HardSwish',
  'LeakyRelu',
  'Elu',
  'Selu',
  'Softplus',
  'Softsign',
  'Sin',
  'Cos',
  'IsNaN',
  'IsInf',
  'Clip',
  'Trilu',
  'CumSum',
  'BatchNormalization',
  'InstanceNormalization',
  'LpNormalization',
  'Mish',
  'Celu',
  'ThresholdedRelu',
  'Dropout',
  'Shrink',
  'SimplifiedLayerNormalization',
  'LayerNormalization',
  ...[
    'FastGelu',
    'BiasGelu',
    'QuickGelu',
    'Gelu',
    'BiasAdd',
    'SkipLayerNormalization',
    'SkipSimplifiedLayerNormalization',
    'RotaryEmbedding',
  ].map((op) => MS + op),
]);
const BROADCAST = new Set([
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Pow',
  'Mod',
  'Min',
  'Max',
  'Sum',
  'Mean',
  'Equal',
  'Less',
  'LessOrEqual',
  'Greater',
  'GreaterOrEqual',
  'And',
  'Or',
  'Xor',
  'BitShift',
  'PRelu',
  'Where',
  'BitwiseAnd',
  'BitwiseOr',
]);
const BOOL_OUT = new Set(['Equal', 'Less', 'LessOrEqual', 'Greater', 'GreaterOrEqual', 'And', 'Or', 'Xor', 'Not', 'IsNaN', 'IsInf']);

function inferNode(node: Node, t: ShapeTable): (ValueInfo | undefined)[] {
  const x = node.inputs[0];
  const ix = t.get(x);
  const op = opKey(node);
  if (op === 'Constant') return [constantNode(node)];
  if (BROADCAST.has(op)) return [broadcastOp(node, t)];
  if (SAME_SHAPE.has(op)) return sameShape(node, t);
  switch (op) {
    case 'Cast':
      return [{ dtype: node.attrInt('to'), shape: ix.shape, value: ix.value }];
    case 'CastLike':
      return [{ dtype: t.get(node.inputs[1]).dtype, shape: ix.shape, value: ix.value }];
    case 'Shape':
      return [shapeOp(node, ix)];
    case 'Size': {
      const n = ix.shape && product(ix.shape);
      return [{ dtype: DataType.INT64, shape: [], value: n ? [n] : undefined }];
    }
    case 'MatMul':
      return [{ dtype: ix.dtype, shape: matmulShape(ix.shape, t.shape(node.inputs[1])) }];
    case `${MS}FusedMatMul`:
      return [{ dtype: ix.dtype, shape: matmulShape(...fusedMatMulOperands(node, t)) }];
    case 'Gemm':
      return [gemm(node, t)];
    case 'Transpose':
      return [transpose(node, ix)];
    case 'Reshape':
      return [reshape(node, t)];
    case 'Flatten':
      return [flatten(node, ix)];
    case 'Squeeze':
      return [squeeze(node, t)];
    case 'Unsqueeze':
      return [unsqueeze(node, t)];
    case 'Concat':
      return [concat(node, t)];
    case 'Split':
      return split(node, t);
    case 'Slice':
      return [slice(node, t)];
    case 'Gather':
      return [gather(node, t)];
    case 'GatherElements':
      return [{ dtype: ix.dtype, shape: t.shape(node.inputs[1]) }];
    case 'Expand':
      return [{ dtype: ix.dtype, shape: expandShape(ix.shape, t.get(node.inputs[1]).value) }];
    case 'Tile':
      return [tile(node, t)];
    case 'ConstantOfShape':
      return [constantOfShape(node, t)];
    case 'Range':
      return [range(node, t)];
    case 'ReduceMean':
    case 'ReduceSum':
    case 'ReduceMax':
    case 'ReduceMin':
    case 'ReduceProd':
    case 'ReduceL2':
    case 'ReduceL1':
    case 'ReduceSumSquare':
    case 'ReduceLogSumExp':
      return [reduce(node, t)];
    case 'ArgMax':
    case 'ArgMin':
      return [argReduce(node, ix)];
    case 'Conv':
    case 'MaxPool':
    case 'AveragePool':
    case 'LpPool':
      return [convLike(node, t)];
    case 'GlobalAveragePool':
    case 'GlobalMaxPool':
      return [{ dtype: ix.dtype, shape: ix.shape?.map((d, i) => (i < 2 ? d : num(1))) }];
    case 'Pad':
      return [pad(node, t)];
    case 'ConvTranspose':
      return [convTranspose(node, t)];
    case 'Resize':
    case 'Upsample':
      return [resize(node, t)];
    case `${MS}Attention`:
      return contribAttention(node, t);
    case `${MS}MultiHeadAttention`:
      return [
        { dtype: ix.dtype, shape: ix.shape && [...ix.shape.slice(0, -1), t.dim(node.inputs[2], -1) ?? ix.shape[ix.shape.length - 1]] },
      ];
    case `${MS}EmbedLayerNormalization`:
      return embedLayerNorm(node, t);
    default:
      return [];
  }
}

function constantNode(node: Node): ValueInfo | undefined {
  const tensor = node.attr('value')?.t;
  if (tensor) {
    const info: ValueInfo = { dtype: tensor.dataType, shape: tensor.dims.map(num) };
    if (isIntType(tensor.dataType) && tensor.size <= MAX_TRACKED) {
      info.value = tensor.toBigInts().map(clampedInt);
    }
    return info;
  }
  const ints = node.attr('value_ints')?.ints;
  if (ints) return { dtype: DataType.INT64, shape: [num(ints.length)], value: ints.map((b) => num(Number(b))) };
  const int = node.attr('value_int')?.i;
  if (int !== undefined) return { dtype: DataType.INT64, shape: [], value: [num(Number(int))] };
  const floats = node.attr('value_floats')?.floats;
  if (floats) return { dtype: DataType.FLOAT, shape: [num(floats.length)] };
  if (node.attr('value_float')) return { dtype: DataType.FLOAT, shape: [] };
  return undefined;
}

function sameShape(node: Node, t: ShapeTable): ValueInfo[] {
  const ix = t.get(node.inputs[0]);
  const op = node.opType;
  const dtype = BOOL_OUT.has(op) ? DataType.BOOL : ix.dtype;
  const main: ValueInfo = { dtype, shape: ix.shape };
  if (op === 'Identity') main.value = ix.value;
  if (op === 'Neg' && ix.value) main.value = ix.value.map((e) => e?.scale(-1));
  if (op === 'Abs' && ix.value)
    main.value = ix.value.map((e) => (e?.isConstant ? num(Math.abs(e.constant!)) : e?.isPositiveSymbolic ? e : undefined));
  if (op === 'LayerNormalization' || op === 'SimplifiedLayerNormalization') {
    const rank = ix.shape?.length ?? 0;
    const axis = normAxis(node.attrInt('axis', -1), rank);
    const stats: ValueInfo = { dtype: DataType.FLOAT, shape: ix.shape?.map((d, i) => (i < axis ? d : num(1))) };
    return [main, stats, stats];
  }
  if (op === 'SkipLayerNormalization' || op === 'SkipSimplifiedLayerNormalization') {
    const stats: ValueInfo = { dtype: DataType.FLOAT, shape: ix.shape?.map((d, i, all) => (i < all.length - 1 ? d : num(1))) };
    return [main, stats, stats, { dtype, shape: ix.shape }];
  }
  if (op === 'Dropout') return [main, { dtype: DataType.BOOL, shape: ix.shape }];
  return [main];
}

function shapeOp(node: Node, ix: ValueInfo): ValueInfo {
  if (!ix.shape) return { dtype: DataType.INT64 };
  const rank = ix.shape.length;
  const clampAxis = (a: number) => Math.min(Math.max(normAxis(a, rank), 0), rank);
  const start = clampAxis(node.attrInt('start', 0));
  const end = clampAxis(node.attrInt('end', rank));
  const dims = ix.shape.slice(start, Math.max(start, end));
  return { dtype: DataType.INT64, shape: [num(dims.length)], value: dims };
}

/** Broadcast two dims the way ONNX does, assuming the model is valid for its inputs. */
function broadcastDim(a: SymDim, b: SymDim): SymDim {
  if (a?.constant === 1) return b;
  if (b?.constant === 1) return a;
  if (a && b && a.equals(b)) return a;
  if (a?.isConstant && !b?.isConstant) return a; // a symbolic dim broadcast against n must be n (or 1)
  if (b?.isConstant && !a?.isConstant) return b;
  return a ?? b;
}

export function broadcastShapes(shapes: (SymDim[] | undefined)[]): SymDim[] | undefined {
  if (shapes.some((s) => !s)) return undefined;
  const rank = Math.max(...shapes.map((s) => s!.length));
  const out: SymDim[] = [];
  for (let i = 0; i < rank; i++) {
    let d: SymDim = num(1);
    for (const s of shapes) {
      const k = i - (rank - s!.length);
      if (k >= 0) d = broadcastDim(d, s![k]);
    }
    out.push(d);
  }
  return out;
}

function broadcastOp(node: Node, t: ShapeTable): ValueInfo {
  const op = node.opType;
  const inputs = node.inputs.filter((v): v is Value => !!v);
  const shape = broadcastShapes(inputs.map((v) => t.shape(v)));
  const dtype = BOOL_OUT.has(op) ? DataType.BOOL : op === 'Where' ? t.get(node.inputs[1]).dtype : t.get(inputs[0]).dtype;
  return {
    dtype,
    shape,
    value: elementwiseValue(
      op,
      inputs.map((v) => t.get(v).value),
      shape,
    ),
  };
}

/** Element values of arithmetic on tracked integer tensors (scalars broadcast). */
function elementwiseValue(op: string, values: (SymDim[] | undefined)[], shape: SymDim[] | undefined): SymDim[] | undefined {
  if (values.some((v) => !v) || !shape) return undefined;
  const size = product(shape)?.constant;
  if (size === undefined || size > MAX_TRACKED) return undefined;
  if (values.some((v) => v!.length !== size && v!.length !== 1)) return undefined;
  const at = (v: SymDim[], i: number) => (v.length === 1 ? v[0] : v[i]);
  const out: SymDim[] = [];
  for (let i = 0; i < size; i++)
    out.push(
      combine(
        op,
        values.map((v) => at(v!, i)),
      ),
    );
  return out;
}

function combine(op: string, args: SymDim[]): SymDim {
  const [a, b, c] = args;
  if (op === 'Where') {
    const cond = a?.constant;
    return cond === undefined ? undefined : cond ? b : c;
  }
  if (!a || !b) return undefined;
  switch (op) {
    case 'Add':
      return a.add(b);
    case 'Sub':
      return a.sub(b);
    case 'Mul':
      return a.mul(b);
    case 'Div': {
      const x = a.constant;
      const y = b.constant;
      if (x !== undefined && y !== undefined && y !== 0) return num(Math.trunc(x / y));
      return a.divExact(b);
    }
    case 'Mod': {
      // Only where both Mod definitions agree (fmod 0 takes the divisor's sign, fmod 1 the dividend's),
      // so the attribute does not matter: sizes padded to a multiple of k compute (k - n % k) % k.
      const x = a.constant;
      const y = b.constant;
      return x !== undefined && y !== undefined && x >= 0 && y > 0 ? num(x % y) : undefined;
    }
    case 'Equal':
      return decideEqual(a, b);
    case 'Max':
      return maxMin(a, b, true);
    case 'Min':
      return maxMin(a, b, false);
    default:
      return undefined;
  }
}

function decideEqual(a: Expr, b: Expr): SymDim {
  if (a.equals(b)) return num(1);
  const diff = a.sub(b).constant;
  if (diff !== undefined) return num(diff === 0 ? 1 : 0);
  // a dim (>= 1) never equals 0 or a negative constant such as -1
  if (a.isPositiveSymbolic && (b.constant ?? 1) <= 0) return num(0);
  if (b.isPositiveSymbolic && (a.constant ?? 1) <= 0) return num(0);
  return undefined;
}

function maxMin(a: Expr, b: Expr, isMax: boolean): SymDim {
  const x = a.constant;
  const y = b.constant;
  if (x !== undefined && y !== undefined) return num(isMax ? Math.max(x, y) : Math.min(x, y));
  if (a.equals(b)) return a;
  // a symbolic dim is at least 1: max(dim, c) = dim for c <= 1
  if (a.isPositiveSymbolic && y !== undefined && y <= 1) return isMax ? a : b;
  if (b.isPositiveSymbolic && x !== undefined && x <= 1) return isMax ? b : a;
  return undefined;
}

export function matmulShape(a: SymDim[] | undefined, b: SymDim[] | undefined): SymDim[] | undefined {
  if (!a || !b || a.length === 0 || b.length === 0) return undefined;
  const a2 = a.length === 1 ? [num(1), a[0]] : a;
  const b2 = b.length === 1 ? [b[0], num(1)] : b;
  const batch = broadcastShapes([a2.slice(0, -2), b2.slice(0, -2)])!;
  const out = [...batch, a2[a2.length - 2], b2[b2.length - 1]];
  if (a.length === 1) out.splice(out.length - 2, 1);
  if (b.length === 1) out.splice(out.length - 1, 1);
  return out;
}

/** com.microsoft FusedMatMul operand shapes with its transA/transB applied (batch transposes unsupported). */
export function fusedMatMulOperands(node: Node, t: ShapeTable): [SymDim[] | undefined, SymDim[] | undefined] {
  if (node.attrInt('transBatchA', 0) || node.attrInt('transBatchB', 0)) return [undefined, undefined];
  const swap = (s: SymDim[] | undefined, flag: string) =>
    s && node.attrInt(flag, 0) && s.length >= 2 ? [...s.slice(0, -2), s[s.length - 1], s[s.length - 2]] : s;
  return [swap(t.shape(node.inputs[0]), 'transA'), swap(t.shape(node.inputs[1]), 'transB')];
}

function gemm(node: Node, t: ShapeTable): ValueInfo {
  const a = t.shape(node.inputs[0]);
  const b = t.shape(node.inputs[1]);
  const m = a && (node.attrInt('transA', 0) ? a[1] : a[0]);
  const n = b && (node.attrInt('transB', 0) ? b[0] : b[1]);
  return { dtype: t.get(node.inputs[0]).dtype, shape: [m, n] };
}

function transpose(node: Node, ix: ValueInfo): ValueInfo {
  if (!ix.shape) return { dtype: ix.dtype };
  const rank = ix.shape.length;
  const perm = node.attrInts('perm', [...Array(rank).keys()].reverse());
  return { dtype: ix.dtype, shape: perm.map((p) => ix.shape![p]) };
}

function reshape(node: Node, t: ShapeTable): ValueInfo {
  const ix = t.get(node.inputs[0]);
  const target = node.inputs[1] ? t.get(node.inputs[1]).value : node.attr('shape')?.ints?.map((b) => num(Number(b)));
  const info: ValueInfo = { dtype: ix.dtype };
  if (ix.value) info.value = ix.value;
  if (!target) {
    const n = t.dim(node.inputs[1], 0)?.constant;
    if (n !== undefined) info.shape = Array<SymDim>(n).fill(undefined);
    return info;
  }
  const allowZero = node.attrInt('allowzero', 0) === 1;
  const dims: SymDim[] = target.map((d, i) => (!allowZero && d?.constant === 0 ? ix.shape?.[i] : d));
  const inferAt = dims.findIndex((d) => d?.constant === -1);
  if (inferAt >= 0) {
    const total = ix.shape && product(ix.shape);
    const known = product(dims.filter((_, i) => i !== inferAt));
    dims[inferAt] = total && known ? total.divExact(known) : undefined;
  }
  info.shape = dims;
  return info;
}

function flatten(node: Node, ix: ValueInfo): ValueInfo {
  if (!ix.shape) return { dtype: ix.dtype };
  const axis = normAxis(node.attrInt('axis', 1), ix.shape.length);
  return { dtype: ix.dtype, shape: [product(ix.shape.slice(0, axis)), product(ix.shape.slice(axis))] };
}

/** Axes from the `axes` attribute (older opsets) or the second input (newer ones). */
function axesOf(node: Node, t: ShapeTable, inputIndex: number): number[] | undefined {
  const attr = node.attr('axes')?.ints;
  if (attr) return attr.map(Number);
  const v = node.inputs[inputIndex];
  return v ? t.ints(v) : undefined;
}

function squeeze(node: Node, t: ShapeTable): ValueInfo {
  const ix = t.get(node.inputs[0]);
  if (!ix.shape) return { dtype: ix.dtype, value: ix.value };
  const rank = ix.shape.length;
  const axes = axesOf(node, t, 1);
  const drop = axes ? new Set(axes.map((a) => normAxis(a, rank))) : new Set(ix.shape.flatMap((d, i) => (d?.constant === 1 ? [i] : [])));
  return { dtype: ix.dtype, shape: ix.shape.filter((_, i) => !drop.has(i)), value: ix.value };
}

function unsqueeze(node: Node, t: ShapeTable): ValueInfo {
  const ix = t.get(node.inputs[0]);
  const axes = axesOf(node, t, 1);
  if (!ix.shape || !axes) return { dtype: ix.dtype, value: ix.value };
  const rank = ix.shape.length + axes.length;
  const at = new Set(axes.map((a) => normAxis(a, rank)));
  const out: SymDim[] = [];
  let k = 0;
  for (let i = 0; i < rank; i++) out.push(at.has(i) ? num(1) : ix.shape[k++]);
  return { dtype: ix.dtype, shape: out, value: ix.value };
}

function concat(node: Node, t: ShapeTable): ValueInfo {
  const inputs = node.inputs.filter((v): v is Value => !!v);
  const infos = inputs.map((v) => t.get(v));
  const dtype = infos[0]?.dtype;
  const shapes = infos.map((i) => i.shape);
  if (shapes.some((s) => !s)) return { dtype };
  const rank = shapes[0]!.length;
  const axis = normAxis(node.attrInt('axis'), rank);
  const shape = shapes[0]!.map((d, i) => {
    if (i !== axis) return shapes.map((s) => s![i]).find((x) => x) ?? d;
    let sum: SymDim = num(0);
    for (const s of shapes) sum = sum && s![i] ? sum.add(s![i]!) : undefined;
    return sum;
  });
  const info: ValueInfo = { dtype, shape };
  if (rank <= 1 && infos.every((i) => i.value)) info.value = infos.flatMap((i) => i.value!);
  return info;
}

function split(node: Node, t: ShapeTable): ValueInfo[] {
  const ix = t.get(node.inputs[0]);
  const count = node.outputs.length;
  if (!ix.shape) return node.outputs.map(() => ({ dtype: ix.dtype }));
  const axis = normAxis(node.attrInt('axis', 0), ix.shape.length);
  const attrSplit = node.attr('split')?.ints?.map(Number);
  const sizes: SymDim[] | undefined = attrSplit
    ? attrSplit.map(num)
    : node.inputs[1]
      ? t.get(node.inputs[1]).value
      : Array<SymDim>(count).fill(ix.shape[axis]?.divExact(count));
  return node.outputs.map((_, k) => ({
    dtype: ix.dtype,
    shape: ix.shape!.map((d, i) => (i === axis ? sizes?.[k] : d)),
  }));
}

function slice(node: Node, t: ShapeTable): ValueInfo {
  const ix = t.get(node.inputs[0]);
  if (!ix.shape) return { dtype: ix.dtype };
  const rank = ix.shape.length;
  const old = node.attr('starts') !== undefined;
  const starts = old ? node.attrInts('starts').map(num) : t.get(node.inputs[1]).value;
  const ends = old ? node.attrInts('ends').map(num) : t.get(node.inputs[2]).value;
  const axesIn = old ? node.attr('axes')?.ints?.map(Number) : node.inputs[3] ? t.ints(node.inputs[3]) : undefined;
  const steps = !old && node.inputs[4] ? t.ints(node.inputs[4]) : undefined;
  if (!starts || !ends) return { dtype: ix.dtype, shape: ix.shape.map(() => undefined) };
  const axes = axesIn ?? starts.map((_, i) => i);
  if (axesIn === undefined && node.inputs[3]) return { dtype: ix.dtype, shape: ix.shape.map(() => undefined) };
  const shape = [...ix.shape];
  const bounds: { axis: number; start: number; end: number; step: number }[] = [];
  axes.forEach((a, k) => {
    const axis = normAxis(a, rank);
    const step = steps?.[k] ?? 1;
    shape[axis] = sliceLength(ix.shape![axis], starts[k], ends[k], step);
    const s = starts[k]?.constant;
    const e = ends[k]?.constant;
    const n = ix.shape![axis]?.constant;
    if (s !== undefined && n !== undefined) bounds.push({ axis, start: s, end: e ?? n, step });
  });
  const info: ValueInfo = { dtype: ix.dtype, shape };
  if (rank === 1 && ix.value && bounds.length === 1) {
    const { start, end, step } = bounds[0];
    const n = ix.value.length;
    const clamp = (i: number, lo: number, hi: number) => Math.min(Math.max(i < 0 ? i + n : i, lo), hi);
    const out: SymDim[] = [];
    if (step > 0) for (let i = clamp(start, 0, n); i < clamp(end, 0, n); i += step) out.push(ix.value[i]);
    else for (let i = clamp(start, -1, n - 1); i > clamp(end, -1, n - 1); i += step) out.push(ix.value[i]);
    info.value = out;
  }
  return info;
}

/** Length of a slice of a dim; symbolic bounds are assumed in range (the model is run on valid inputs). */
function sliceLength(dim: SymDim, start: SymDim, end: SymDim, step: number): SymDim {
  if (!start || !end) return undefined;
  const big = 2 ** 31;
  let s = start;
  let e = end;
  const n = dim?.constant;
  if (s.constant !== undefined && s.constant < 0 && dim) s = dim.add(s);
  if (e.constant !== undefined && e.constant < 0 && dim) e = dim.add(e);
  if (e.constant !== undefined && e.constant >= big && step > 0) e = dim ?? e;
  if (e.constant !== undefined && e.constant <= -big && step < 0) return dim && s.add(1);
  if (n !== undefined && s.constant !== undefined && e.constant !== undefined) {
    const lo = Math.min(Math.max(s.constant, 0), n);
    const hi = Math.min(Math.max(e.constant, 0), n);
    return num(step > 0 ? Math.max(0, Math.ceil((hi - lo) / step)) : Math.max(0, Math.ceil((lo - hi) / -step)));
  }
  if (step === 1) return e.sub(s);
  return step > 0 ? e.sub(s).ceilDiv(step) : s.sub(e).ceilDiv(-step);
}

function gather(node: Node, t: ShapeTable): ValueInfo {
  const ix = t.get(node.inputs[0]);
  const ind = t.get(node.inputs[1]);
  if (!ix.shape || !ind.shape) return { dtype: ix.dtype };
  const axis = normAxis(node.attrInt('axis', 0), ix.shape.length);
  const shape = [...ix.shape.slice(0, axis), ...ind.shape, ...ix.shape.slice(axis + 1)];
  const info: ValueInfo = { dtype: ix.dtype, shape };
  const indices = t.ints(node.inputs[1]);
  if (ix.value && ix.shape.length === 1 && indices) {
    const n = ix.value.length;
    info.value = indices.map((i) => ix.value![i < 0 ? i + n : i]);
  }
  return info;
}

function expandShape(shape: SymDim[] | undefined, target: SymDim[] | undefined): SymDim[] | undefined {
  if (!shape || !target) return undefined;
  return broadcastShapes([shape, target]);
}

function tile(node: Node, t: ShapeTable): ValueInfo {
  const ix = t.get(node.inputs[0]);
  const reps = t.get(node.inputs[1]).value;
  return { dtype: ix.dtype, shape: ix.shape && reps ? ix.shape.map((d, i) => (d && reps[i] ? d.mul(reps[i]!) : undefined)) : undefined };
}

function constantOfShape(node: Node, t: ShapeTable): ValueInfo {
  const dims = t.get(node.inputs[0]).value;
  const fill = node.attr('value')?.t;
  const dtype = fill?.dataType ?? DataType.FLOAT;
  const info: ValueInfo = { dtype, shape: dims };
  const size = dims && product(dims)?.constant;
  if (size !== undefined && size <= MAX_TRACKED && isIntType(dtype)) {
    const v = fill ? fill.toNumbers()[0] : 0;
    info.value = Array(size).fill(num(v));
  }
  return info;
}

function range(node: Node, t: ShapeTable): ValueInfo {
  const [start, limit, delta] = [0, 1, 2].map((i) => t.get(node.inputs[i]).value?.[0]);
  const dtype = t.get(node.inputs[0]).dtype;
  if (!start || !limit || !delta) return { dtype, shape: [undefined] };
  const step = delta.constant;
  if (step === undefined || step === 0) return { dtype, shape: [undefined] };
  const span = limit.sub(start);
  const length = step === 1 ? span : span.ceilDiv(step);
  const info: ValueInfo = { dtype, shape: [length] };
  const n = length.constant;
  const s = start.constant;
  if (n !== undefined && s !== undefined && n <= MAX_TRACKED)
    info.value = Array.from({ length: Math.max(0, n) }, (_, i) => num(s + i * step));
  return info;
}

function reduce(node: Node, t: ShapeTable): ValueInfo {
  const ix = t.get(node.inputs[0]);
  if (!ix.shape) return { dtype: ix.dtype };
  const rank = ix.shape.length;
  const keep = node.attrInt('keepdims', 1) === 1;
  const axesList = axesOf(node, t, 1);
  if (axesList === undefined && node.inputs[1]) return { dtype: ix.dtype };
  const noop = node.attrInt('noop_with_empty_axes', 0) === 1;
  const axes = new Set((axesList?.length ? axesList : noop ? [] : [...Array(rank).keys()]).map((a) => normAxis(a, rank)));
  const shape = ix.shape.flatMap((d, i) => (axes.has(i) ? (keep ? [num(1)] : []) : [d]));
  return { dtype: ix.dtype, shape };
}

function argReduce(node: Node, ix: ValueInfo): ValueInfo {
  if (!ix.shape) return { dtype: DataType.INT64 };
  const axis = normAxis(node.attrInt('axis', 0), ix.shape.length);
  const keep = node.attrInt('keepdims', 1) === 1;
  return { dtype: DataType.INT64, shape: ix.shape.flatMap((d, i) => (i === axis ? (keep ? [num(1)] : []) : [d])) };
}

function convLike(node: Node, t: ShapeTable): ValueInfo {
  const ix = t.get(node.inputs[0]);
  if (!ix.shape) return { dtype: ix.dtype };
  const spatial = ix.shape.length - 2;
  const w = t.shape(node.inputs[1]);
  const kernel = node.attr('kernel_shape') ? node.attrInts('kernel_shape') : w?.slice(2).map((d) => d?.constant ?? NaN);
  if (!kernel || kernel.some((k) => Number.isNaN(k))) return { dtype: ix.dtype };
  const strides = node.attrInts('strides', Array(spatial).fill(1));
  const dilations = node.attrInts('dilations', Array(spatial).fill(1));
  const pads = node.attrInts('pads', Array(spatial * 2).fill(0));
  const autoPad = node.attr('auto_pad') ? node.attrString('auto_pad') : 'NOTSET';
  const ceilMode = node.attrInt('ceil_mode', 0) === 1;
  const channels = node.opType === 'Conv' ? w?.[0] : ix.shape[1];
  const out: SymDim[] = [ix.shape[0], channels];
  for (let i = 0; i < spatial; i++) {
    const d = ix.shape[i + 2];
    if (!d) {
      out.push(undefined);
      continue;
    }
    if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') {
      out.push(d.ceilDiv(strides[i]));
      continue;
    }
    const span = d.add(pads[i] + pads[i + spatial] - dilations[i] * (kernel[i] - 1) - 1);
    const padded = autoPad === 'VALID' ? d.sub(dilations[i] * (kernel[i] - 1) + 1) : span;
    out.push((ceilMode ? padded.ceilDiv(strides[i]) : padded.floorDiv(strides[i])).add(1));
  }
  return { dtype: ix.dtype, shape: out };
}

function pad(node: Node, t: ShapeTable): ValueInfo {
  const ix = t.get(node.inputs[0]);
  const pads = node.attr('pads') ? node.attrInts('pads') : t.ints(node.inputs[1]);
  if (!ix.shape || !pads || node.inputs[3]) return { dtype: ix.dtype };
  const rank = ix.shape.length;
  return { dtype: ix.dtype, shape: ix.shape.map((d, i) => d?.add(pads[i] + pads[i + rank])) };
}

/** ConvTranspose without output_shape: stride*(in-1) + output_padding + dilation*(k-1) + 1 - pads. */
function convTranspose(node: Node, t: ShapeTable): ValueInfo {
  const ix = t.get(node.inputs[0]);
  const w = t.shape(node.inputs[1]);
  if (!ix.shape || !w || node.attr('output_shape') || (node.attr('auto_pad') && node.attrString('auto_pad') !== 'NOTSET'))
    return { dtype: ix.dtype };
  const spatial = ix.shape.length - 2;
  const kernel = node.attr('kernel_shape') ? node.attrInts('kernel_shape') : w.slice(2).map((d) => d?.constant ?? NaN);
  const strides = node.attrInts('strides', Array(spatial).fill(1));
  const dilations = node.attrInts('dilations', Array(spatial).fill(1));
  const pads = node.attrInts('pads', Array(spatial * 2).fill(0));
  const extra = node.attrInts('output_padding', Array(spatial).fill(0));
  const group = node.attrInt('group', 1);
  const channels = w[1]?.mul(group);
  const out: SymDim[] = [ix.shape[0], channels];
  for (let i = 0; i < spatial; i++) {
    const d = ix.shape[i + 2];
    if (!d || Number.isNaN(kernel[i])) out.push(undefined);
    else
      out.push(
        d
          .sub(1)
          .mul(strides[i])
          .add(extra[i] + dilations[i] * (kernel[i] - 1) + 1 - pads[i] - pads[i + spatial]),
      );
  }
  return { dtype: ix.dtype, shape: out };
}

/** Resize: explicit `sizes`, or each dim times its scale (floored, as ONNX defines). */
function resize(node: Node, t: ShapeTable): ValueInfo {
  const ix = t.get(node.inputs[0]);
  if (!ix.shape) return { dtype: ix.dtype };
  const sizesInput = node.opType === 'Resize' ? node.inputs[3] : undefined;
  const sizes = sizesInput ? t.get(sizesInput).value : undefined;
  if (sizes && sizes.length === ix.shape.length) return { dtype: ix.dtype, shape: sizes };
  const scalesInput = node.opType === 'Resize' ? node.inputs[2] : node.inputs[1];
  const scales = constantFloats(scalesInput) ?? node.attr('scales')?.floats;
  if (!scales || scales.length !== ix.shape.length) return { dtype: ix.dtype, shape: ix.shape.map(() => undefined) };
  const shape = ix.shape.map((d, i) => {
    const s = scales[i];
    if (!d) return undefined;
    if (Number.isInteger(s)) return d.mul(s);
    const inverse = 1 / s;
    if (Number.isInteger(inverse)) return d.floorDiv(inverse);
    const c = d.constant;
    return c !== undefined ? num(Math.floor(c * s)) : undefined;
  });
  return { dtype: ix.dtype, shape };
}

function constantFloats(v: Value | null | undefined): number[] | undefined {
  const tensor = v?.constTensor();
  return tensor && tensor.size > 0 ? Array.from(tensor.toFloat32()) : undefined;
}

function contribAttention(node: Node, t: ShapeTable): ValueInfo[] {
  const ix = t.get(node.inputs[0]);
  const sizes = node.attr('qkv_hidden_sizes')?.ints?.map(Number);
  const bias = t.dim(node.inputs[2], 0)?.constant;
  const vHidden = sizes ? sizes[2] : bias !== undefined ? bias / 3 : undefined;
  return [{ dtype: ix.dtype, shape: ix.shape && [...ix.shape.slice(0, -1), vHidden !== undefined ? num(vHidden) : undefined] }];
}

function embedLayerNorm(node: Node, t: ShapeTable): ValueInfo[] {
  const ids = t.shape(node.inputs[0]);
  const hidden = t.dim(node.inputs[2], 1);
  return [
    { dtype: DataType.FLOAT, shape: ids && [...ids, hidden] },
    { dtype: DataType.INT32, shape: ids && [ids[0]] },
  ];
}
