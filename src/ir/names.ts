// One name authority per model: every name a pass or builder creates comes from here, so names stay
// unique across the main graph, its subgraphs and functions.
import type { Model } from './model.js';

export class NameAuthority {
  private readonly taken = new Set<string>();
  private readonly counters = new Map<string, number>();

  static forModel(model: Model): NameAuthority {
    const names = new NameAuthority();
    for (const graph of model.allGraphs()) {
      for (const v of graph.localValues()) names.claim(v.name);
      for (const v of graph.valueInfos) names.claim(v.name);
      for (const node of graph.nodes) if (node.name) names.claim(node.name);
    }
    return names;
  }

  claim(name: string): void {
    this.taken.add(name);
  }

  has(name: string): boolean {
    return this.taken.has(name);
  }

  /** `base` itself if free, else `base_1`, `base_2`, ... ; the result is claimed. */
  fresh(base: string): string {
    let name = base;
    let n = this.counters.get(base) ?? 0;
    while (this.taken.has(name)) name = `${base}_${++n}`;
    this.counters.set(base, n);
    this.taken.add(name);
    return name;
  }
}
