// Dead-code elimination as a pass: removes nodes no graph output depends on and weights nothing reads.
import { eliminateDeadCode } from '../../src/ir/transforms.js';
import type { Pass } from '../pipeline.js';

export const deadCodePass: Pass = {
  name: 'eliminate-dead-code',
  run(model) {
    let nodes = 0;
    let initializers = 0;
    const roots = [model.graph, ...model.functions.map((f) => f.body)];
    for (const graph of roots) {
      const removed = eliminateDeadCode(graph);
      nodes += removed.nodes;
      initializers += removed.initializers;
    }
    return { model, modified: nodes + initializers > 0, report: { removedNodes: nodes, removedInitializers: initializers } };
  },
};
