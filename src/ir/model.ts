// The model: the main graph plus everything ModelProto carries around it.
import { type Attribute, Graph } from './graph.js';
import type { Entry, UnknownFields } from './types.js';

export interface OpsetId {
  domain?: string;
  version: number;
  unknownFields?: UnknownFields;
}

/** A model-local function (FunctionProto). Its body is a Graph whose inputs and outputs are untyped. */
export class ModelFunction {
  overload?: string;
  docString?: string;
  metadataProps?: Entry[];
  unknownFields: UnknownFields;
  /** names of attributes the body may reference, without defaults */
  attributeNames: string[] = [];
  /** attributes with default values */
  attributeProtos: Attribute[] = [];
  opsetImports: OpsetId[] = [];

  constructor(
    public domain: string | undefined,
    public name: string,
    public body: Graph,
  ) {}

  get key(): string {
    return functionKey(this.domain ?? '', this.name, this.overload ?? '');
  }
}

export function functionKey(domain: string, name: string, overload = ''): string {
  return `${domain}::${name}::${overload}`;
}

export interface TrainingInfo {
  initialization?: Graph;
  algorithm?: Graph;
  initializationBinding?: Entry[];
  updateBinding?: Entry[];
  unknownFields?: UnknownFields;
}

/** ModelProto.configuration: a named device layout, carried through untouched. */
export type ModelDeviceConfiguration = Record<string, unknown>;

export class Model {
  irVersion?: number;
  opsetImports: OpsetId[] = [];
  producerName?: string;
  producerVersion?: string;
  domain?: string;
  modelVersion?: bigint;
  docString?: string;
  metadataProps?: Entry[];
  trainingInfo: TrainingInfo[] = [];
  functions: ModelFunction[] = [];
  configuration: ModelDeviceConfiguration[] = [];
  unknownFields: UnknownFields;

  constructor(public graph: Graph = new Graph()) {}

  opsetVersion(domain = ''): number | undefined {
    const normalized = domain === 'ai.onnx' ? '' : domain;
    return this.opsetImports.find((o) => (o.domain ?? '') === normalized)?.version;
  }

  /** Declare (or raise) an opset import; refuses to lower an existing one. */
  requireOpset(domain: string, version: number): void {
    const existing = this.opsetImports.find((o) => (o.domain ?? '') === domain);
    if (!existing) this.opsetImports.push({ domain, version });
    else if (existing.version < version) existing.version = version;
  }

  getMetadata(key: string): string | undefined {
    return this.metadataProps?.find(([k]) => k === key)?.[1];
  }

  setMetadata(key: string, value: string): void {
    const props = (this.metadataProps ??= []);
    const at = props.findIndex(([k]) => k === key);
    if (at >= 0) props[at] = [key, value];
    else props.push([key, value]);
  }

  /** Every graph in the model: main, nested, function bodies and training graphs. */
  *allGraphs(): Generator<Graph> {
    const roots = [
      this.graph,
      ...this.functions.map((f) => f.body),
      ...this.trainingInfo.flatMap((t) => [t.initialization, t.algorithm].filter((g): g is Graph => !!g)),
    ];
    for (const root of roots) {
      yield root;
      yield* root.subgraphsDeep();
    }
  }
}
