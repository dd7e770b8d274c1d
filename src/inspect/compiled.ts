// What vcompile did to a model it compiled, read back from the metadata the passes record
// (`vcompile.plugins`, `vcompile.modules`, `vcompile.switchable`, `vcompile.version`). The transformer
// analysis does not follow wrapped blocks, so for compiled models this is what `inspect --layers` shows.
import type { Model } from '../ir/model.js';

export interface CompiledDescription {
  version: string | null;
  /** each plugin with the layers it went on (numbered as the plugin pass saw the model: after modules) */
  plugins: { source: string; sha256: string; ratio: number; scope: string; layers: number[] }[];
  /** each module with the layers of the input model it replaced */
  modules: { start: number; end: number; kind: string; source: string }[];
  switchable: { input: string; ratios: number[]; default: number } | null;
}

/** The compilation a model records, or null for a model vcompile did not compile. */
export function describeCompiled(model: Model): CompiledDescription | null {
  const read = <T>(key: string): T | undefined => {
    const text = model.getMetadata(key);
    return text === undefined ? undefined : (JSON.parse(text) as T);
  };
  const plugins = read<CompiledDescription['plugins']>('vcompile.plugins');
  const modules = read<CompiledDescription['modules']>('vcompile.modules');
  const switchable = read<CompiledDescription['switchable']>('vcompile.switchable');
  if (!plugins && !modules && !switchable) return null;
  return {
    version: model.getMetadata('vcompile.version') ?? null,
    plugins: plugins ?? [],
    modules: modules ?? [],
    switchable: switchable ?? null,
  };
}

export function formatCompiled(c: CompiledDescription): string {
  const lines = [`compiled by vcompile${c.version ? ` ${c.version}` : ''}:`];
  for (const m of c.modules) {
    const span = m.start === m.end ? `layer ${m.start}` : `layers ${m.start}-${m.end}`;
    lines.push(`  ${span} (of the input model): replaced by module ${m.kind === 'file' ? m.source : `builtin:${m.kind}`}`);
  }
  for (const p of c.plugins) {
    const layers = p.layers.length === 1 ? `layer ${p.layers[0]}` : `layers ${p.layers.join(', ')}`;
    lines.push(`  ${layers}: ${p.scope} plugin, k=${p.ratio} (${p.source}, sha256 ${p.sha256.slice(0, 12)})`);
  }
  if (c.switchable)
    lines.push(`  switchable: ${c.switchable.input} in {${c.switchable.ratios.join(', ')}} (default ${c.switchable.default})`);
  return lines.join('\n');
}
