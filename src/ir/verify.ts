// The IR verifier: the invariants every pass must keep. Tests run it after every pass; the CLI runs it
// under --verify-ir. It reports every problem it finds, each with where it is.
import type { Graph, Node, Value } from './graph.js';
import { functionKey, type Model, type OpsetId } from './model.js';

export interface Problem {
  where: string;
  message: string;
}

export function verifyModel(model: Model): Problem[] {
  const problems: Problem[] = [];
  const functions = new Set(model.functions.map((f) => functionKey(f.domain ?? '', f.name, f.overload ?? '')));
  const check = { model, functions, problems };
  checkGraph(model.graph, 'graph', new Set(), model.opsetImports, check);
  checkInterfaceTyped(model.graph, problems);
  for (const fn of model.functions) {
    checkGraph(
      fn.body,
      `function ${fn.domain ?? ''}::${fn.name}`,
      new Set(),
      fn.opsetImports.length ? fn.opsetImports : model.opsetImports,
      check,
    );
  }
  model.trainingInfo.forEach((t, i) => {
    const outer = new Set(model.graph.localValues());
    for (const g of [t.initialization, t.algorithm]) if (g) checkGraph(g, `training_info[${i}]`, outer, model.opsetImports, check);
  });
  return problems;
}

/** Throws one error listing every problem, or returns the model unchanged. */
export function assertValid(model: Model, after = 'pass'): Model {
  const problems = verifyModel(model);
  if (problems.length) {
    const lines = problems.slice(0, 20).map((p) => `  ${p.where}: ${p.message}`);
    if (problems.length > 20) lines.push(`  ... and ${problems.length - 20} more`);
    throw new Error(`IR verification failed after ${after}:\n${lines.join('\n')}`);
  }
  return model;
}

interface Check {
  model: Model;
  functions: Set<string>;
  problems: Problem[];
}

function checkGraph(graph: Graph, where: string, outer: ReadonlySet<Value>, opsets: OpsetId[], check: Check): void {
  const report = (at: string, message: string) => check.problems.push({ where: at, message });
  const defined = new Set<Value>();
  const names = new Map<string, Value>();
  const outerNames = new Set([...outer].map((v) => v.name));
  const define = (v: Value, at: string) => {
    const previous = names.get(v.name);
    if (previous && previous !== v) report(at, `value '${v.name}' is defined more than once`);
    names.set(v.name, v);
    defined.add(v);
    if (v.graph !== graph) report(at, `value '${v.name}' does not record graph '${graph.name ?? ''}' as its scope`);
  };
  for (const v of graph.inputs) define(v, `${where} input`);
  for (const v of graph.initializers) {
    if (!v.initializer) report(`${where} initializer`, `'${v.name}' has no tensor`);
    define(v, `${where} initializer`);
  }
  for (const { value } of graph.sparseInitializers) define(value, `${where} sparse initializer`);

  graph.nodes.forEach((node, index) => {
    const at = `${where} node ${index} (${node})`;
    if (node.graph !== graph) report(at, 'node does not record this graph as its owner');
    node.inputs.forEach((v, i) => {
      if (!v) return;
      if (!defined.has(v) && !outer.has(v)) {
        const later = v.producer?.graph === graph;
        report(
          at,
          later ? `input '${v.name}' is used before it is defined (not topologically sorted)` : `input '${v.name}' is not defined in scope`,
        );
      }
      if (!v.uses().some((u) => u.node === node && u.index === i)) report(at, `use-list of '${v.name}' misses input ${i}`);
    });
    checkOpset(node, opsets, check, at);
    const subgraphs = node.subgraphs();
    const visible = subgraphs.length ? new Set([...outer, ...defined]) : outer;
    for (const sub of subgraphs) {
      if (sub.outerScope !== graph) report(at, `subgraph '${sub.name ?? ''}' does not record its enclosing graph`);
      checkGraph(sub, `${at} / subgraph ${sub.name ?? ''}`, visible, opsets, check);
    }
    node.outputs.forEach((v) => {
      if (!v) return;
      if (v.producer !== node) report(at, `output '${v.name}' does not record this node as producer`);
      if (outerNames.has(v.name)) report(at, `output '${v.name}' shadows a value of an enclosing graph`);
      define(v, at);
    });
  });
  for (const v of [...defined]) checkUses(v, report, where);
  for (const v of graph.outputs) {
    if (!defined.has(v) && !outer.has(v)) report(`${where} output`, `graph output '${v.name}' is not defined`);
  }
}

function checkUses(v: Value, report: (at: string, message: string) => void, where: string): void {
  for (const use of v.uses()) {
    if (use.node.inputs[use.index] !== v)
      report(where, `use-list of '${v.name}' names ${use.node} input ${use.index}, which reads something else`);
    if (!use.node.graph) report(where, `'${v.name}' is used by ${use.node}, which is not in any graph`);
  }
}

function checkOpset(node: Node, opsets: OpsetId[], check: Check, at: string): void {
  const domain = node.domain === 'ai.onnx' ? '' : (node.domain ?? '');
  if (check.functions.has(functionKey(domain, node.opType, node.overload ?? ''))) return;
  if (!opsets.some((o) => (o.domain ?? '') === domain)) {
    check.problems.push({ where: at, message: `domain '${domain || 'ai.onnx'}' has no opset import` });
  }
}

function checkInterfaceTyped(graph: Graph, problems: Problem[]): void {
  for (const [kind, values] of [
    ['input', graph.inputs],
    ['output', graph.outputs],
  ] as const) {
    for (const v of values) {
      if (!v.type || v.type.kind === 'unset') problems.push({ where: `graph ${kind}`, message: `'${v.name}' has no type` });
    }
  }
}
