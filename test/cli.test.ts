// The command line as users and pipelines see it: output, exit codes, files written or not.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { vcompile } from './helpers/cli.js';

const repo = path.resolve(import.meta.dirname, '..');
const bert = path.join(repo, 'fixtures/bert_opset14.onnx');

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-cli-'));
}

describe('vcompile MODEL -o OUT (no rewrite)', () => {
  it('writes the same model, byte for byte, and leaves the input alone', () => {
    const out = path.join(tempDir(), 'same.onnx');
    const before = fs.statSync(bert).mtimeMs;
    const r = vcompile(bert, '-o', out, '--verify-ir');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(fs.readFileSync(out).equals(fs.readFileSync(bert))).toBe(true);
    expect(fs.statSync(bert).mtimeMs).toBe(before);
  });

  it('--json reports what was written', () => {
    const out = path.join(tempDir(), 'm.onnx');
    const r = vcompile(bert, '-o', out, '--json', '--external-data', 'always');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report).toMatchObject({ input: bert, output: out, externalData: `${out}.data`, passes: [] });
    expect(fs.statSync(`${out}.data`).size).toBeGreaterThan(800_000);
  });

  it('--eliminate-dead-code reports what it removed', () => {
    const out = path.join(tempDir(), 'm.onnx');
    const r = vcompile(bert, '-o', out, '--eliminate-dead-code', '--json', '--verify-ir');
    expect(r.code).toBe(0);
    const [pass] = JSON.parse(r.stdout).passes;
    expect(pass.name).toBe('eliminate-dead-code');
    expect(pass.report.removedNodes).toBeGreaterThanOrEqual(0);
  });
});

describe('bad input: one line on stderr, exit code 2, no output file', () => {
  const cases: [string, () => string, RegExp][] = [
    ['a text file', () => '/etc/hostname', /^vcompile: \/etc\/hostname: not an ONNX model \(/],
    ['a missing file', () => '/nonexistent/model.onnx', /^vcompile: \/nonexistent\/model\.onnx: no such file$/],
    [
      'a truncated model',
      () => {
        const file = path.join(tempDir(), 'cut.onnx');
        fs.writeFileSync(file, fs.readFileSync(bert).subarray(0, 5000));
        return file;
      },
      /not an ONNX model \(protobuf decode failed at byte \d+/,
    ],
  ];
  for (const [what, input, message] of cases) {
    it(what, () => {
      const out = path.join(tempDir(), 'never.onnx');
      const r = vcompile(input(), '-o', out);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr.trim()).toMatch(message);
      expect(fs.existsSync(out)).toBe(false);
      expect(fs.readdirSync(path.dirname(out))).toEqual([]);
    });
  }

  it('refuses to overwrite the input unless asked', () => {
    const dir = tempDir();
    const copy = path.join(dir, 'model.onnx');
    fs.copyFileSync(bert, copy);
    const r = vcompile(copy, '-o', copy);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`vcompile: ${copy}: refusing to overwrite the input model (write elsewhere, or pass --overwrite)\n`);
    expect(vcompile(copy, '-o', copy, '--overwrite').code).toBe(0);
    expect(fs.readFileSync(copy).equals(fs.readFileSync(bert))).toBe(true);
  });

  it('a missing -o is a usage error', () => {
    const r = vcompile(bert);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('vcompile: Missing required argument: output\n');
  });
});

describe('vcompile inspect', () => {
  it('prints versions, interface, weights and ops', () => {
    const r = vcompile('inspect', bert);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('IR version 7, opsets ai.onnx 14');
    expect(r.stdout).toContain('input_ids: int64[batch, seq]');
    expect(r.stdout).toContain('last_hidden_state: float[batch, seq, 64]');
    expect(r.stdout).toMatch(/MatMul 24/);
  });

  it('--json counts initializers and Constant weights together', () => {
    const summary = JSON.parse(vcompile('inspect', bert, '--json').stdout);
    const manifest = JSON.parse(fs.readFileSync(path.join(repo, 'fixtures/manifest.json'), 'utf8'));
    const trueParams = manifest.fixtures.find((f: { file: string }) => f.file === 'bert_opset14.onnx').params;
    // PyTorch parameters plus the float buffers and scalar constants the exporter adds.
    expect(summary.parameters).toBeGreaterThanOrEqual(trueParams);
    expect(summary.parameters).toBeLessThan(trueParams * 1.01);
    expect(summary.opsets).toEqual({ 'ai.onnx': 14 });
    expect(summary.inputs.map((v: { name: string }) => v.name)).toEqual(['input_ids', 'attention_mask']);
    expect(summary.externalDataFiles).toEqual([]);
  });

  it('lists external data files', () => {
    const out = path.join(tempDir(), 'ext.onnx');
    expect(vcompile(bert, '-o', out, '--external-data', 'always').code).toBe(0);
    expect(JSON.parse(vcompile('inspect', out, '--json').stdout).externalDataFiles).toEqual(['ext.onnx.data']);
  });
});

describe('modules and plugins in one compile', () => {
  it('extract, then splice back: the same outputs', () => {
    const dir = tempDir();
    const module = path.join(dir, 'layers1-2.onnx');
    expect(vcompile('extract', bert, '--layers', '1-2', '-o', module).code).toBe(0);
    const r = vcompile(bert, '--module', `1-2=${module}`, '-o', path.join(dir, 'back.onnx'), '--max-error', '1e-5', '--json');
    expect(r.stderr).toBe('');
    const report = JSON.parse(r.stdout);
    expect(report.passes[0].report.layerMap).toEqual([0, null, null]);
    expect(report.verify.outputs[0].maxAbs).toBeLessThanOrEqual(1e-5);
  });

  it('plugins count layers as the input model does, and go on the layers that remain', () => {
    const dir = tempDir();
    const r = vcompile(
      bert,
      '--module',
      '1-2=builtin:average',
      '--plugin',
      'builtin:mean:2',
      '-o',
      path.join(dir, 'a.onnx'),
      '--json',
      '--no-verify',
    );
    expect(r.code).toBe(0);
    const plugins = JSON.parse(r.stdout).passes[1];
    expect(plugins.summary).toBe('layer 0: ffn k=2 (builtin:mean:2)');
    const refused = vcompile(bert, '--module', '1-2=builtin:keep-first', '--plugin', '2=builtin:mean:2', '-o', path.join(dir, 'b.onnx'));
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe('vcompile: --plugin: layer 2 was replaced by a module (plugins go on the layers that remain)\n');
    expect(fs.existsSync(path.join(dir, 'b.onnx'))).toBe(false);
  });
});

describe('compiled models', () => {
  it('inspect --layers describes what vcompile did; compiling one again is refused plainly', () => {
    const out = path.join(tempDir(), 'm4.onnx');
    expect(vcompile(bert, '--plugin', 'builtin:mean:4', '-o', out, '--no-verify').code).toBe(0);
    const r = vcompile('inspect', out, '--layers');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^compiled by vcompile \S+:\n {2}layers 0, 1, 2: ffn plugin, k=4 \(builtin:mean:4, sha256 [0-9a-f]{12}\)$/m);
    expect(r.stdout).toMatch(
      /^no layer table for a compiled model \(transformer analysis stopped: .*\); inspect the model it was compiled from$/m,
    );
    const json = JSON.parse(vcompile('inspect', out, '--layers', '--json').stdout);
    expect(json.compiled.plugins[0]).toMatchObject({ source: 'builtin:mean:4', ratio: 4, scope: 'ffn', layers: [0, 1, 2] });
    expect(json.transformer).toBeNull();
    const again = vcompile(out, '--plugin', 'builtin:mean:2', '-o', path.join(tempDir(), 'again.onnx'));
    expect(again.code).toBe(2);
    expect(again.stderr).toBe(
      `vcompile: ${out} was already compiled by vcompile (metadata vcompile.plugins: its layers carry plugins); compile the original model instead\n`,
    );
  });
});
