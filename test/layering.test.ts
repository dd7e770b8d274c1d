// The folders are the pipeline, and this test keeps them so: it reads every import of the source tree and
// fails when a file reaches into a layer above its own, or when a pure layer touches the file system,
// ONNX Runtime or the process. Layers, bottom up:
//   base      src/errors.ts, src/random.ts, src/version.ts
//   ir        src/ir (with the IR verifier and the op-version history)
//   onnx      src/onnx (the only code that knows protobuf)
//   analysis  src/analysis
//   passes    passes/ (pure graph rewrites)
//   compile   src/compile (plugin and module files loaded, handed to the passes)
//   runtime   src/runtime, then verify (numeric) and bench (library timing code), inspect
//   decide    src/decide (code that runs models to decide rewrites)
//   cli       src/cli; the library entry src/index.ts and the benchmark scripts in bench/ sit on top
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const repo = path.resolve(import.meta.dirname, '..');

type Layer =
  | 'base'
  | 'ir'
  | 'onnx'
  | 'analysis'
  | 'passes'
  | 'compile'
  | 'runtime'
  | 'verify'
  | 'bench'
  | 'inspect'
  | 'decide'
  | 'cli'
  | 'top';

/** What each layer may import (besides itself). */
const ALLOWED: Record<Layer, Layer[]> = {
  base: [],
  ir: ['base'],
  onnx: ['base', 'ir'],
  analysis: ['base', 'ir'],
  passes: ['base', 'ir', 'analysis'],
  compile: ['base', 'ir', 'onnx', 'analysis', 'passes'],
  inspect: ['base', 'ir', 'onnx', 'analysis'],
  runtime: ['base', 'ir', 'onnx', 'analysis', 'passes'],
  verify: ['base', 'ir', 'onnx', 'analysis', 'runtime'],
  bench: ['base', 'ir', 'onnx', 'analysis', 'passes', 'runtime'],
  decide: ['base', 'ir', 'onnx', 'analysis', 'passes', 'compile', 'runtime', 'verify', 'bench'],
  cli: ['base', 'ir', 'onnx', 'analysis', 'passes', 'compile', 'runtime', 'verify', 'bench', 'inspect', 'decide'],
  top: ['base', 'ir', 'onnx', 'analysis', 'passes', 'compile', 'runtime', 'verify', 'bench', 'inspect', 'decide', 'cli'],
};

/** Layers that rewrite or describe graphs only: no file system, no ONNX Runtime, no process. */
const PURE: Layer[] = ['base', 'ir', 'analysis', 'passes'];
const IMPURE_MODULES = /^(node:(fs|child_process|os|process|worker_threads|net|http)|fs|onnxruntime-node)(\/|$)/;

function layerOf(file: string): Layer | undefined {
  const rel = path.relative(repo, file).split(path.sep).join('/');
  if (['src/errors.ts', 'src/random.ts', 'src/version.ts'].includes(rel)) return 'base';
  if (rel === 'src/index.ts' || rel.startsWith('bench/')) return 'top';
  if (rel.startsWith('passes/')) return 'passes';
  const folder = /^src\/([^/]+)\//.exec(rel)?.[1];
  return folder && folder in ALLOWED ? (folder as Layer) : undefined;
}

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === 'models' ? [] : sourceFiles(full);
    return entry.name.endsWith('.ts') ? [full] : [];
  });
}

/** Every module a file imports or re-exports (static and dynamic), as written. */
function importsOf(text: string): string[] {
  const found: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^'"`;]*?from\s*'([^']+)'/g)) found.push(m[1]);
  for (const m of text.matchAll(/(?:^|\n)\s*import\s*'([^']+)'/g)) found.push(m[1]);
  for (const m of text.matchAll(/import\(\s*'([^']+)'\s*\)/g)) found.push(m[1]);
  return found;
}

interface Violation {
  file: string;
  imports: string;
  why: string;
}

function violations(): Violation[] {
  const files = ['src', 'passes', 'bench'].flatMap((d) => sourceFiles(path.join(repo, d)));
  const found: Violation[] = [];
  for (const file of files) {
    const layer = layerOf(file);
    const rel = path.relative(repo, file);
    if (!layer) {
      found.push({ file: rel, imports: '', why: 'belongs to no layer (add its folder to test/layering.test.ts)' });
      continue;
    }
    for (const spec of importsOf(fs.readFileSync(file, 'utf8'))) {
      if (spec.startsWith('.')) {
        const target = path.resolve(path.dirname(file), spec.replace(/\.js$/, '.ts'));
        if (target.endsWith('package.json')) continue;
        const to = layerOf(target);
        if (!to) found.push({ file: rel, imports: spec, why: 'a file outside every layer' });
        else if (to !== layer && !ALLOWED[layer].includes(to))
          found.push({ file: rel, imports: spec, why: `${layer} may not import ${to}` });
      } else if (PURE.includes(layer) && IMPURE_MODULES.test(spec)) {
        found.push({ file: rel, imports: spec, why: `${layer} is pure: no file system, ONNX Runtime or process` });
      }
    }
  }
  return found;
}

describe('layering', () => {
  it('no file imports a layer above its own, and the pure layers touch no files, runtime or process', () => {
    expect(violations()).toEqual([]);
  });

  it('the check sees imports in every form, so it can fail', () => {
    const text = [
      "import * as fs from 'node:fs';",
      "import { a } from '../../src/runtime/session.js';",
      "export { b } from './x.js';",
      "import type { C } from '../cli/main.js';",
      "const d = await import('../decide/assemble.js');",
    ].join('\n');
    expect(importsOf(text)).toEqual(['node:fs', '../../src/runtime/session.js', './x.js', '../cli/main.js', '../decide/assemble.js']);
    const pass = path.join(repo, 'passes/plugin/index.ts');
    expect(layerOf(pass)).toBe('passes');
    expect(ALLOWED.passes.includes(layerOf(path.join(repo, 'src/runtime/session.ts'))!)).toBe(false);
    expect(IMPURE_MODULES.test('node:fs')).toBe(true);
    expect(IMPURE_MODULES.test('onnxruntime-node')).toBe(true);
    expect(IMPURE_MODULES.test('node:path')).toBe(false);
  });
});
