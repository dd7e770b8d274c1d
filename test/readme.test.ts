// The README's examples run as written, so the README cannot rot. Every ```sh and ```ts block runs, in
// order, in one scratch folder that holds the repository's fixtures/ and node_modules/ (so paths in the
// examples resolve as they do from a checkout) with `vcompile` on the PATH; a block must succeed. Blocks
// in other languages (``` and ```text: synopses, formats) are shown, not run; a block right after
// `<!-- readme: not run (why) -->` is skipped for the reason given (installing packages, a GPU).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const repo = path.resolve(import.meta.dirname, '..');

interface Example {
  lang: 'sh' | 'ts';
  code: string;
  /** 1-based line of the opening fence */
  line: number;
}

/** The runnable blocks of a markdown text, in order. */
function examples(markdown: string): { run: Example[]; skipped: { line: number; why: string }[] } {
  const run: Example[] = [];
  const skipped: { line: number; why: string }[] = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)/.exec(lines[i]);
    if (!open) continue;
    let end = i + 1;
    while (end < lines.length && !lines[end].startsWith('```')) end++;
    const lang = open[1];
    const note = /^<!-- readme: not run \((.+)\) -->$/.exec(lines[i - 1] ?? '');
    if (lang === 'sh' || lang === 'ts') {
      if (note) skipped.push({ line: i + 1, why: note[1] });
      else run.push({ lang, code: lines.slice(i + 1, end).join('\n'), line: i + 1 });
    }
    i = end;
  }
  return { run, skipped };
}

function scratch(): { dir: string; env: NodeJS.ProcessEnv } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-readme-'));
  fs.symlinkSync(path.join(repo, 'fixtures'), path.join(dir, 'fixtures'));
  fs.symlinkSync(path.join(repo, 'node_modules'), path.join(dir, 'node_modules'));
  const bin = path.join(dir, '.bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'vcompile'), `#!/bin/sh\nexec "${process.execPath}" "${path.join(repo, 'bin/vcompile')}" "$@"\n`, {
    mode: 0o755,
  });
  return { dir, env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, VCOMPILE_DEBUG: '1' } };
}

function runExample(example: Example, dir: string, env: NodeJS.ProcessEnv): { status: number | null; output: string } {
  if (example.lang === 'sh') {
    const r = spawnSync('bash', ['-e', '-o', 'pipefail', '-c', example.code], { cwd: dir, env, encoding: 'utf8' });
    return { status: r.status, output: `${r.stdout}${r.stderr}` };
  }
  const file = path.join(dir, `example-${example.line}.mts`); // an ES module: examples may await at the top level
  fs.writeFileSync(file, example.code.replaceAll("from 'vcompile'", `from '${path.join(repo, 'src/index.ts')}'`));
  const r = spawnSync(path.join(repo, 'node_modules/.bin/tsx'), [file], { cwd: dir, env, encoding: 'utf8' });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

describe('README examples', () => {
  const { run, skipped } = examples(fs.readFileSync(path.join(repo, 'README.md'), 'utf8'));
  const { dir, env } = scratch();

  it('finds the examples, and says why any are not run', () => {
    expect(run.length).toBeGreaterThanOrEqual(6);
    for (const s of skipped) expect(s.why.length).toBeGreaterThan(5);
  });

  for (const example of run) {
    it(`${example.lang} block at README.md:${example.line} runs`, { timeout: 180_000 }, () => {
      const { status, output } = runExample(example, dir, env);
      if (status !== 0) throw new Error(`README.md:${example.line} exited ${status}:\n${example.code}\n---\n${output.slice(-3000)}`);
    });
  }
});

describe('the example finder', () => {
  it('takes sh and ts blocks, skips marked ones and other languages', () => {
    const md = [
      '```sh',
      'a',
      '```',
      '<!-- readme: not run (needs a GPU) -->',
      '```sh',
      'b',
      '```',
      '```',
      'c',
      '```',
      '```ts',
      'd',
      '```',
    ].join('\n');
    const { run, skipped } = examples(md);
    expect(run.map((e) => [e.lang, e.code, e.line])).toEqual([
      ['sh', 'a', 1],
      ['ts', 'd', 11],
    ]);
    expect(skipped).toEqual([{ line: 5, why: 'needs a GPU' }]);
  });
});
