// Plain IR types: data types, value types with symbolic shapes, key/value metadata.

/** TensorProto.DataType numbers. */
export const DataType = {
  UNDEFINED: 0,
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  STRING: 8,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  UINT32: 12,
  UINT64: 13,
  COMPLEX64: 14,
  COMPLEX128: 15,
  BFLOAT16: 16,
  FLOAT8E4M3FN: 17,
  FLOAT8E4M3FNUZ: 18,
  FLOAT8E5M2: 19,
  FLOAT8E5M2FNUZ: 20,
  UINT4: 21,
  INT4: 22,
  FLOAT4E2M1: 23,
  FLOAT8E8M0: 24,
} as const;
export type DataTypeName = keyof typeof DataType;

const BITS: Record<number, number> = {
  1: 32,
  2: 8,
  3: 8,
  4: 16,
  5: 16,
  6: 32,
  7: 64,
  9: 8,
  10: 16,
  11: 64,
  12: 32,
  13: 64,
  14: 64,
  15: 128,
  16: 16,
  17: 8,
  18: 8,
  19: 8,
  20: 8,
  21: 4,
  22: 4,
  23: 4,
  24: 8,
};

/** Bits per element, or undefined for strings and unknown types. */
export function elementBits(dataType: number): number | undefined {
  return BITS[dataType];
}

export function dataTypeName(dataType: number): string {
  const entry = Object.entries(DataType).find(([, v]) => v === dataType);
  return entry ? entry[0].toLowerCase() : `dtype(${dataType})`;
}

/** A shape dimension: a number, a symbolic name, or neither (unknown). */
export interface Dim {
  value?: number;
  param?: string;
  denotation?: string;
}

export type IrType =
  | { kind: 'tensor' | 'sparse_tensor'; elemType?: number; shape?: Dim[]; denotation?: string }
  | { kind: 'sequence' | 'optional'; elem?: IrType; denotation?: string }
  | { kind: 'map'; keyType?: number; value?: IrType; denotation?: string }
  | { kind: 'opaque'; domain?: string; name?: string; denotation?: string }
  | { kind: 'unset'; denotation?: string };

export type TensorType = Extract<IrType, { kind: 'tensor' | 'sparse_tensor' }>;

/** Shorthand for a tensor type: dims given as numbers (fixed) or strings (symbolic). */
export function tensorType(elemType: number, dims?: readonly (number | string)[]): TensorType {
  return {
    kind: 'tensor',
    elemType,
    shape: dims?.map((d) => (typeof d === 'number' ? { value: d } : { param: d })),
  };
}

export function isTensorType(type: IrType | undefined): type is TensorType {
  return type?.kind === 'tensor';
}

export type Entry = [key: string, value: string];

/** Opaque bytes of protobuf fields this version of the schema does not know, kept for round trips. */
export type UnknownFields = Uint8Array[] | undefined;

export function formatDims(shape: readonly Dim[] | undefined): string {
  if (!shape) return '?';
  return `[${shape.map((d) => d.value ?? d.param ?? '?').join(', ')}]`;
}
