// Raise a model's default-domain opset, one opset at a time as ONNX's own version converter does: every
// node of the default domain (in the main graph, If/Loop/Scan bodies, training graphs and model-local
// functions) is carried through each step in which its op got a new version, by that step's adapter.
// Everything is planned on drafts first; the model changes only once every node's conversion is known
// to work. Nodes of other domains are left alone and listed in the report.

import { inferShapes, type ShapeTable } from '../../src/analysis/shapes.js';
import { VcompileError } from '../../src/errors.js';
import { AttributeType, type Graph, Node, Value } from '../../src/ir/graph.js';
import { functionKey, type Model, type ModelFunction, type OpsetId } from '../../src/ir/model.js';
import { NameAuthority } from '../../src/ir/names.js';
import { irVersionFor, MAX_ORT_OPSET, OP_VERSIONS, versionAt } from '../../src/ir/op-versions.js';
import { isTensorType } from '../../src/ir/types.js';
import { ADAPTERS } from './adapters.js';
import { Draft, Fresh, NewConstant, type OutRef, type Ref } from './draft.js';
import { knownDtype, knownRank } from './known.js';
import type { Step } from './step.js';

export interface OpsetUpgradeOptions {
  /** leave a model whose opset is already `target` or newer as it is, instead of refusing to downgrade it */
  atLeast?: boolean;
}

export interface OpsetUpgradeReport {
  /** the default-domain opset the model declared (undefined: it imports none) */
  from?: number;
  /** the default-domain opset it declares now */
  to: number;
  /** the opset asked for */
  target: number;
  irVersion?: { from?: number; to: number };
  /** nodes whose form changed, by their op before the upgrade */
  converted: Record<string, number>;
  /** default-domain nodes that needed no change */
  unchanged: number;
  /** nodes the conversion added (Flatten/Shape/Reshape around Softmax, Casts, Unsqueezes, ...) */
  addedNodes: number;
  /** constants added for attributes that became inputs (initializers, or Constant nodes in functions) */
  addedConstants: number;
  /** ops the model uses before the opset that defines them (as ONNX Runtime's optimizer writes), taken at their first version */
  adopted: Record<string, number>;
  functions: { name: string; domain: string; from: number; to: number }[];
  /** nodes of other domains, left as they are */
  customDomains: { domain: string; version?: number; nodes: number }[];
}

/**
 * Upgrade `model` in place to default-domain opset `target` and return what changed. Throws a
 * VcompileError naming the node, op and step when a node cannot be converted; the model is then unchanged.
 */
export function upgradeOpset(model: Model, target: number, options: OpsetUpgradeOptions = {}): OpsetUpgradeReport {
  if (!Number.isInteger(target) || target < 1) throw new VcompileError(`target opset ${target} is not an ONNX opset`);
  if (target > MAX_ORT_OPSET)
    throw new VcompileError(`target opset ${target} is newer than ONNX Runtime runs; the newest it runs is ${MAX_ORT_OPSET}`);
  const from = defaultImport(model.opsetImports)?.version;
  const report: OpsetUpgradeReport = {
    from,
    to: from ?? target,
    target,
    converted: {},
    unchanged: 0,
    addedNodes: 0,
    addedConstants: 0,
    adopted: {},
    functions: [],
    customDomains: [],
  };
  if (from !== undefined && from > target) {
    if (options.atLeast) return finish(model, countForeign(mainGraphs(model), report));
    throw new VcompileError(`target opset ${target} is older than the model's opset ${from}: opsets can only be raised`);
  }
  const irTo = Math.max(model.irVersion ?? 0, irVersionFor(target));
  const functionKeys = new Set(model.functions.map((f) => f.key));
  const names = NameAuthority.forModel(model);
  const plans: GraphPlan[] = [];
  const upgradedFunctions: ModelFunction[] = [];

  if (from !== undefined && from < target) {
    const table = mainShapes(model);
    for (const graph of mainGraphs(model)) plans.push(planGraph(graph, from, target, table, functionKeys, report, irTo >= 4));
  } else {
    countForeign(mainGraphs(model), report);
  }
  for (const fn of model.functions) {
    const own = defaultImport(fn.opsetImports);
    const fnFrom = own?.version ?? (fn.opsetImports.length ? undefined : from);
    if (fnFrom === undefined || fnFrom >= target) continue;
    const graphs = [fn.body, ...fn.body.subgraphsDeep()];
    let shapes: ShapeTable | undefined;
    for (const graph of graphs) shapes = inferShapes(graph, shapes);
    for (const graph of graphs) plans.push(planGraph(graph, fnFrom, target, shapes!, functionKeys, report, false));
    report.functions.push({ name: fn.name, domain: fn.domain ?? '', from: fnFrom, to: target });
    upgradedFunctions.push(fn);
  }
  if (from === undefined && upgradedFunctions.length === 0) return finish(model, report);

  // Everything is planned: from here on nothing can refuse.
  for (const plan of plans) applyPlan(plan, names, report);
  if (from !== undefined && from < target) {
    setDefaultImport(model.opsetImports, target);
    report.to = target;
    if ((model.irVersion ?? 0) < irTo) {
      report.irVersion = { from: model.irVersion, to: irTo };
      model.irVersion = irTo;
    }
  }
  for (const fn of upgradedFunctions) if (defaultImport(fn.opsetImports)) setDefaultImport(fn.opsetImports, target);
  return finish(model, report);
}

/** Whether the upgrade changed anything. */
export function upgradeChanged(report: OpsetUpgradeReport): boolean {
  return report.to !== report.from || report.functions.length > 0;
}

/** "opset 9 -> 17: 45 nodes converted (Clip 28, Slice 10, Squeeze 7), 720 unchanged, 7 constants added" */
export function summarizeUpgrade(report: OpsetUpgradeReport): string {
  if (!upgradeChanged(report))
    return `opset ${report.from ?? 'none'}: already at ${report.from !== undefined && report.from > report.target ? 'a newer opset' : 'the target'}; nothing to do`;
  const converted = Object.entries(report.converted).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const total = converted.reduce((n, [, c]) => n + c, 0);
  const parts = [
    `${total} node${total === 1 ? '' : 's'} converted${total ? ` (${converted.map(([op, n]) => `${op} ${n}`).join(', ')})` : ''}`,
    `${report.unchanged} unchanged`,
  ];
  if (report.addedNodes) parts.push(`${report.addedNodes} node${report.addedNodes === 1 ? '' : 's'} added`);
  if (report.addedConstants) parts.push(`${report.addedConstants} constants added`);
  if (report.irVersion) parts.push(`IR version ${report.irVersion.from ?? 'none'} -> ${report.irVersion.to}`);
  if (report.functions.length) parts.push(`functions: ${report.functions.map((f) => f.name).join(', ')}`);
  if (report.customDomains.length)
    parts.push(`left alone: ${report.customDomains.map((c) => `${c.nodes} ${c.domain} node${c.nodes === 1 ? '' : 's'}`).join(', ')}`);
  return `opset ${report.from ?? 'none'} -> ${report.to}: ${parts.join(', ')}`;
}

// ------------------------------------------------------------------------------------------ plan

interface NodePlan {
  node: Node;
  /** op of the node before the upgrade */
  op: string;
  drafts: Draft[];
}

interface GraphPlan {
  graph: Graph;
  nodes: NodePlan[];
  /** new constants become initializers (else Constant nodes: function bodies, IR 3) */
  initializers: boolean;
}

/** The main graph, its training graphs, and every graph nested in them (not function bodies). */
function mainGraphs(model: Model): Graph[] {
  const roots = [model.graph, ...model.trainingInfo.flatMap((t) => [t.initialization, t.algorithm].filter((g): g is Graph => !!g))];
  return roots.flatMap((root) => [root, ...root.subgraphsDeep()]);
}

function mainShapes(model: Model): ShapeTable {
  let table = inferShapes(model.graph);
  for (const sub of model.graph.subgraphsDeep()) table = inferShapes(sub, table);
  return table;
}

function planGraph(
  graph: Graph,
  from: number,
  to: number,
  shapes: ShapeTable,
  functionKeys: Set<string>,
  report: OpsetUpgradeReport,
  initializers: boolean,
): GraphPlan {
  const plan: GraphPlan = { graph, nodes: [], initializers };
  graph.nodes.forEach((node, index) => {
    const domain = node.domain === 'ai.onnx' ? '' : (node.domain ?? '');
    if (domain !== '' || functionKeys.has(functionKey(domain, node.opType, node.overload ?? ''))) {
      countCustom(report, domain);
      return;
    }
    const where = `node ${node.name || `#${index} of graph '${graph.name ?? ''}'`}`;
    const original = node.opType;
    const label = (op: string) => `${where} (${op === original ? op : `${original}, as ${op}`})`;
    let version = versionAt(node.opType, from);
    if (version === undefined) {
      const first = OP_VERSIONS[node.opType]?.[0];
      if (first === undefined)
        throw new VcompileError(
          `${label(original)}: ${original} is not an operator of the default ONNX domain (experimental and custom ops need their own domain)`,
        );
      if (first > to) throw new VcompileError(`${label(original)}: ${original} is defined from opset ${first}, after the target ${to}`);
      report.adopted[node.opType] = (report.adopted[node.opType] ?? 0) + 1;
      version = first;
    }
    let drafts = [Draft.of(node, version)];
    for (let v = from + 1; v <= to; v++) drafts = drafts.flatMap((d) => stepDraft(d, v, label, graph, shapes));
    plan.nodes.push({ node, op: node.opType, drafts });
  });
  return plan;
}

function stepDraft(d: Draft, to: number, label: (op: string) => string, graph: Graph, shapes: ShapeTable): Draft[] {
  if (!OP_VERSIONS[d.op]?.includes(to) || d.version >= to) return [d];
  const adapter = ADAPTERS[d.op]?.[to];
  const op = d.op;
  if (!adapter) {
    d.version = to;
    return [d];
  }
  const step = makeStep(to, graph, shapes, (reason) => {
    throw new VcompileError(`${label(op)}: cannot upgrade from opset ${to - 1} to ${to}: ${reason}`);
  });
  const result = adapter(d, step) ?? [d];
  if (d.op === op) d.version = to;
  return result;
}

function makeStep(to: number, graph: Graph, shapes: ShapeTable, fail: (reason: string) => never): Step {
  const asValue = (ref: Ref): Value | undefined => (ref instanceof Value ? ref : undefined);
  return {
    from: to - 1,
    to,
    fail,
    rank(ref) {
      if (ref instanceof Fresh) return ref.known.rank;
      if (ref instanceof NewConstant) return ref.tensor.dims.length;
      const v = asValue(ref);
      return v && knownRank(v, shapes);
    },
    dtype(ref) {
      if (ref instanceof Fresh) return ref.known.dtype;
      if (ref instanceof NewConstant) return ref.tensor.dataType;
      const v = asValue(ref);
      return v && knownDtype(v, shapes);
    },
    dims(ref) {
      if (ref instanceof NewConstant) return ref.tensor.dims;
      const v = asValue(ref);
      if (!v) return undefined;
      const t = v.constTensor();
      if (t) return t.dims;
      const shape = shapes.shape(v);
      if (shape) return shape.map((d) => d?.constant);
      return isTensorType(v.type) ? v.type.shape?.map((d) => d.value) : undefined;
    },
    constant(ref) {
      if (ref instanceof NewConstant) return ref.tensor;
      return asValue(ref)?.constTensor();
    },
    used(ref) {
      if (!ref) return false;
      if (ref instanceof Fresh) return true;
      const scope = ref.graph ?? graph;
      return ref.useCount > 0 || scope.outputs.includes(ref) || scope.subgraphsReturning(ref).length > 0;
    },
    node(op, inputs, outputs) {
      const d = new Draft(op, versionAt(op, to)!, inputs, outputs as OutRef[], []);
      d.changed = true;
      return d;
    },
  };
}

// ------------------------------------------------------------------------------------------ apply

function applyPlan(plan: GraphPlan, names: NameAuthority, report: OpsetUpgradeReport): void {
  const shared = new Map<string, Value>();
  for (const { node, op, drafts } of plan.nodes) {
    const main = drafts.find((d) => d.origin === node)!;
    if (drafts.length === 1 && !main.changed) {
      report.unchanged++;
      continue;
    }
    report.converted[op] = (report.converted[op] ?? 0) + 1;
    const base = node.name || node.opType;
    const made = new Map<Fresh, Value>();
    const before: Node[] = [];
    const resolve = (ref: Ref): Value | null => {
      if (ref === null || ref instanceof Value) return ref;
      if (ref instanceof Fresh) {
        if (!made.has(ref)) made.set(ref, new Value(names.fresh(`${base}/${ref.hint}`)));
        return made.get(ref)!;
      }
      return constant(ref);
    };
    const constant = (c: NewConstant): Value => {
      report.addedConstants++;
      if (!plan.initializers) {
        const value = new Value(names.fresh(`${base}/${c.hint}`));
        const node = new Node('Constant', [], [value], [{ name: 'value', type: AttributeType.TENSOR, t: c.tensor }]);
        node.name = names.fresh(`${base}/${c.hint}/Constant`);
        before.push(node);
        return value;
      }
      const key = constantKey(c);
      const known = key && shared.get(key);
      if (known) {
        report.addedConstants--;
        return known;
      }
      const value = new Value(names.fresh(`${base}/${c.hint}`));
      c.tensor.name = value.name;
      plan.graph.addInitializer(value, c.tensor);
      if (key) shared.set(key, value);
      return value;
    };

    // The node itself first: outputs that move to an added node are released here.
    const released = rewriteNode(node, main, resolve);
    const after: Node[] = [];
    let seenMain = false;
    for (const d of drafts) {
      if (d === main) {
        seenMain = true;
        continue;
      }
      const added = new Node(
        d.op,
        d.inputs.map(resolve),
        d.outputs.map((o) => resolve(o)),
        d.attributes,
      );
      added.name = names.fresh(`${base}/${d.op}`);
      report.addedNodes++;
      (seenMain ? after : before).push(added);
    }
    plan.graph.insertNodes(before, node);
    const next = plan.graph.nodes[plan.graph.nodes.indexOf(node) + 1];
    plan.graph.insertNodes(after, next);
    // Outputs that went (BatchNormalization's saved statistics) leave the value_info list too.
    const gone = released.filter((v) => !v.producer);
    if (gone.length) plan.graph.valueInfos = plan.graph.valueInfos.filter((v) => !gone.includes(v));
  }
}

/**
 * Give `node` the draft's op, attributes, inputs and outputs, keeping the node object and its name.
 * Returns the output values it no longer produces.
 */
function rewriteNode(node: Node, d: Draft, resolve: (ref: Ref) => Value | null): Value[] {
  node.opType = d.op;
  node.attributes = d.attributes;
  const inputs = d.inputs.map(resolve);
  if (inputs.length !== node.inputs.length || inputs.some((v, i) => v !== node.inputs[i])) {
    node.detachInputs();
    inputs.forEach((v, i) => node.setInput(i, v));
  }
  const outputs = d.outputs.map((o) => resolve(o));
  const released: Value[] = [];
  const count = Math.max(outputs.length, node.outputs.length);
  for (let i = 0; i < count; i++) {
    const old = node.outputs[i] ?? null;
    const now = outputs[i] ?? null;
    if (old === now) continue;
    node.setOutput(i, now);
    // The old value moves to an added node (or, unused, goes): it must have no producer when it is
    // given its new one, and Node.setOutput does not clear the producer of the value it replaces.
    if (old && old.producer === node) {
      old.producer = null;
      old.producerIndex = -1;
      released.push(old);
    }
  }
  node.outputs.length = outputs.length;
  return released;
}

/** Small constants are shared within a graph: identical axes lists need not be stored twice. */
function constantKey(c: NewConstant): string | undefined {
  const t = c.tensor;
  if (t.storage.kind !== 'raw' || t.byteLength > 256) return undefined;
  return `${t.dataType}|${t.dims.join(',')}|${Array.from(t.storage.bytes).join(',')}`;
}

// ------------------------------------------------------------------------------------------ helpers

function defaultImport(imports: OpsetId[]): OpsetId | undefined {
  return imports.find((o) => (o.domain ?? '') === '' || o.domain === 'ai.onnx');
}

function setDefaultImport(imports: OpsetId[], version: number): void {
  const existing = defaultImport(imports);
  if (existing) existing.version = version;
  else imports.push({ domain: '', version });
}

function countCustom(report: OpsetUpgradeReport, domain: string): void {
  const entry = report.customDomains.find((c) => c.domain === domain);
  if (entry) entry.nodes++;
  else report.customDomains.push({ domain, nodes: 1 });
}

function countForeign(graphs: Iterable<Graph>, report: OpsetUpgradeReport): OpsetUpgradeReport {
  for (const graph of graphs) {
    for (const node of graph.nodes) {
      const domain = node.domain === 'ai.onnx' ? '' : (node.domain ?? '');
      if (domain !== '') countCustom(report, domain);
      else report.unchanged++;
    }
  }
  return report;
}

/** Records the imported version of each custom domain. */
function finish(model: Model, report: OpsetUpgradeReport): OpsetUpgradeReport {
  for (const entry of report.customDomains) entry.version = model.opsetVersion(entry.domain);
  return report;
}
