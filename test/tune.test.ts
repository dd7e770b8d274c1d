// vcompile tune end to end on a generated transformer with a class head: a budget only some candidates
// meet gives one that meets it on held-out samples and is the fastest measured of those; an impossible
// budget gives the original (exit 0 and one line, or exit 1 and nothing written with --require); the
// frontier is non-dominated; a second run with the report folder evaluates nothing new.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { describeInputs } from '../src/analysis/inputs.js';
import { lossOf, parseBudget } from '../src/decide/frontier.js';
import { pickFastest, speedOf, type TuneOptions, type TuneResult, tune } from '../src/decide/tune.js';
import { loadModel, saveModel } from '../src/onnx/file.js';
import { Rng } from '../src/random.js';
import { openData } from '../src/runtime/data.js';
import { vcompile } from './helpers/cli.js';
import { buildTransformer } from './helpers/transformer-gen.js';

const repo = path.resolve(import.meta.dirname, '..');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-tune-'));
const VOCAB = 50;

const modelFile = path.join(dir, 'tagger.onnx');
saveModel(
  buildTransformer({
    layers: 3,
    hidden: 32,
    heads: 4,
    ffnInner: 64,
    norm: 'post',
    activation: 'gelu',
    bias: true,
    mask: true,
    causal: false,
    vocab: VOCAB,
    classes: 12,
    seed: 3,
  }),
  modelFile,
);
const dataFile = path.join(dir, 'data.jsonl');
{
  const rng = new Rng(4, 'tune data');
  const rows = Array.from({ length: 50 }, (_, i) => ({
    input_ids: Array.from({ length: 24 + (i % 13) }, () => Math.floor(rng.next() * VOCAB)),
  }));
  fs.writeFileSync(dataFile, `${rows.map((r) => JSON.stringify(r)).join('\n')}\n`);
}
const timing = ['--batch', '2', '--seq', '40', '--runs', '3', '--scopes', 'ffn,layer'];

/** `vcompile tune` on the tagger and its data with a budget, the small timing shape, and -o OUT. */
function tuneCli(budget: string, out: string, ...more: string[]) {
  return vcompile('tune', modelFile, '--data', dataFile, '--budget', budget, ...timing, '-o', out, ...more);
}

async function tuneWith(budget: string, options: Partial<TuneOptions> = {}): Promise<TuneResult> {
  const data = openData(dataFile, describeInputs(loadModel(modelFile)));
  return tune(modelFile, fs.readFileSync(modelFile), data, {
    budget: parseBudget(budget),
    batch: 2,
    seq: 40,
    runs: 3,
    scopes: ['ffn', 'layer'],
    verifyIr: true,
    ...options,
  });
}

describe('vcompile tune', () => {
  let loose: TuneResult;

  it('with a budget only some candidates meet, returns the fastest measured one that meets it', async () => {
    loose = await tuneWith('kl<=1000');
    const losses = loose.points.map((p) => lossOf(p.validation, 'kl')).sort((a, b) => a - b);
    expect(losses[0]).toBeLessThan(losses[losses.length - 1]);
    const bound = (losses[0] + losses[losses.length - 1]) / 2;
    const r = await tuneWith(`kl<=${bound}`);
    expect(r.points.some((p) => !p.meetsBudget)).toBe(true);
    expect(r.chosen).not.toBeNull();
    expect(r.chosen!.validation.kl).toBeLessThanOrEqual(bound);
    const within = r.points.filter((p) => p.meetsBudget);
    expect(r.chosen).toBe(pickFastest(within));
    expect(r.chosen!.measuredSpeedup).not.toBeNull();
    expect(r.chosen!.test).not.toBeNull();
    expect(r.model!.getMetadata('vcompile.plugins')).toBeDefined();
    expect(r.splits).toEqual({ fit: 30, validation: 10, test: 10 });
  }, 240_000);

  it("with estimated profiles and fewer fitting samples (as for a large model), the loss of each variant's uniform point is shared among the layers and the choice still meets the budget", async () => {
    const losses = loose.points.map((p) => lossOf(p.validation, 'kl')).sort((a, b) => a - b);
    const bound = (losses[0] + losses[losses.length - 1]) / 2;
    const r = await tuneWith(`kl<=${bound}`, { profiles: 'estimated', fitSamples: 20 });
    expect(r.splits).toEqual({ fit: 20, validation: 10, test: 10 });
    expect(r.profiles.length).toBe(3 * 4);
    expect(r.profiles.every((p) => p.validation === null)).toBe(true);
    for (const uniform of r.points.filter((p) => p.kind === 'uniform')) {
      const [{ scope, ratio }] = Object.values(uniform.configuration);
      const shared = r.profiles.filter((p) => p.scope === scope && p.ratio === ratio).reduce((sum, p) => sum + p.loss, 0);
      expect(shared).toBeCloseTo(uniform.validation.kl, 9);
    }
    // fewer evaluations than measuring every layer in every variant
    expect(r.cache.evaluated).toBeLessThan(loose.cache.evaluated);
    expect(r.chosen).not.toBeNull();
    expect(r.chosen!.validation.kl).toBeLessThanOrEqual(bound);
  }, 240_000);

  it('keeps a non-dominated frontier of evaluated points', () => {
    const frontier = loose.points.filter((p) => p.frontier);
    expect(frontier.length).toBeGreaterThan(0);
    for (const p of loose.points) {
      const dominatedBy = loose.points.find(
        (q) =>
          speedOf(q) >= speedOf(p) && q.validation.kl <= p.validation.kl && (speedOf(q) > speedOf(p) || q.validation.kl < p.validation.kl),
      );
      expect(p.frontier).toBe(dominatedBy === undefined);
    }
  });

  it('writes OUT and the report; a second run with the report folder evaluates nothing new', () => {
    const out = path.join(dir, 'fast.onnx');
    const report = path.join(dir, 'report');
    const first = tuneCli('top1-agreement>=0.5', out, '--report', report, '--json');
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    const a = JSON.parse(first.stdout);
    expect(a.cache.evaluated).toBeGreaterThan(0);
    expect(fs.readdirSync(report).sort()).toEqual(['cache', 'frontier.json', 'frontier.svg']);
    expect(fs.readFileSync(path.join(report, 'frontier.svg'), 'utf8')).toMatch(/^<svg[\s\S]*<\/svg>\n$/);
    const frontier = JSON.parse(fs.readFileSync(path.join(report, 'frontier.json'), 'utf8'));
    expect(frontier.points.length).toBe(a.points.length);
    expect(Object.keys(frontier.points[0]).sort()).toEqual(
      [
        'configuration',
        'description',
        'frontier',
        'id',
        'kind',
        'measuredIqr',
        'measuredSpeedup',
        'meetsBudget',
        'predictedSpeedup',
        'test',
        'validation',
      ].sort(),
    );
    expect(loadModel(out).getMetadata('vcompile.tune')).toBeDefined();
    const second = tuneCli('top1-agreement>=0.5', out, '--report', report);
    expect(second.code).toBe(0);
    expect(second.stdout).toMatch(/cache: \d+ reused, 0 evaluated, 0 plugins fitted/);
    // a tighter budget: the fits, profiles and uniform points come from the cache
    const tighter = tuneCli('top1-agreement>=0.8', out, '--report', report, '--json');
    expect(tighter.code).toBe(0);
    const c = JSON.parse(tighter.stdout);
    expect(c.cache.fitted).toBe(0);
    expect(c.cache.hits).toBeGreaterThanOrEqual(c.profiles.length + 4);
    expect(c.budget).toEqual({ metric: 'top1-agreement', bound: 0.8 });
    // a plugin file gone from the cache is fitted again, not a crash
    const cached = fs.readdirSync(path.join(report, 'cache')).filter((f) => f.endsWith('.onnx'));
    fs.rmSync(path.join(report, 'cache', cached[0]));
    const again = tuneCli('top1-agreement>=0.8', out, '--report', report, '--json');
    expect(again.stderr).toBe('');
    expect(JSON.parse(again.stdout).cache.fitted).toBe(1);
  }, 240_000);

  it('an impossible budget writes the original and says so in one line, or exits 1 with --require', () => {
    const out = path.join(dir, 'same.onnx');
    const report = path.join(dir, 'report');
    const r = tuneCli('kl<=0', out, '--report', report);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/^vcompile: note: no candidate met the budget kl<=0 \(closest: .*\); .*same\.onnx is the original model\n$/);
    const written = loadModel(out);
    expect(written.getMetadata('vcompile.plugins')).toBeUndefined();
    expect(written.graph.nodes.length).toBe(loadModel(modelFile).graph.nodes.length);
    const required = path.join(dir, 'required.onnx');
    const q = tuneCli('kl<=0', required, '--report', report, '--require');
    expect(q.code).toBe(1);
    expect(q.stderr).toMatch(/^vcompile: no candidate met the budget kl<=0 .*nothing written \(--require\)\n$/);
    expect(fs.existsSync(required)).toBe(false);
  }, 240_000);

  it('--units gives the FFN plugins it fits that many full-length units', async () => {
    const unitWeights = (r: TuneResult) =>
      r.model!.graph.initializers.filter((v) => v.name.includes('units_up_weight')).map((v) => v.initializer!.dims);
    const [three, none] = await Promise.all([
      tuneWith('kl<=1000', { scopes: ['ffn'], ratios: [2], units: 3 }),
      tuneWith('kl<=1000', { scopes: ['ffn'], ratios: [2], units: 0 }),
    ]);
    const compressed = Object.keys(three.chosen?.configuration ?? {}).length;
    expect(compressed).toBeGreaterThan(0);
    expect(unitWeights(three)).toEqual(Array.from({ length: compressed }, () => [32, 3]));
    expect(unitWeights(none)).toEqual([]);
  }, 240_000);

  it('refuses bad flags before any work, in one line', () => {
    const out = path.join(dir, 'never.onnx');
    for (const [flags, message] of [
      [['--budget', 'accuracy<=1'], /budget 'accuracy<=1': expected/],
      [['--time-limit', 'soon'], /--time-limit: expected a duration/],
      [['--scopes', 'ffn,mlp'], /--scopes: 'mlp' is not a scope/],
      [['--target-speedup', '0.5'], /--target-speedup must be a number above 1/],
      [['--fit-samples', '0'], /--fit-samples must be a positive integer, got 0/],
      [
        ['--budget', 'accuracy-drop<=1'],
        /--budget accuracy-drop<=1: .*data\.jsonl has no labels; give labelled data or a top1-agreement or kl budget/,
      ],
      [['--samples', '7'], /.*data\.jsonl: 7 samples are too few to tune: .*; give at least 10/],
      [['--profiles', 'guessed'], /--profiles guessed: expected one of auto, measured, estimated/],
      [['--units', '1.5'], /--units must be a whole number from 0, got 1\.5/],
      [
        ['--units', '2', '--scopes', 'attention'],
        /--units: full-length units are a feed-forward block's hidden units, and --scopes attention leaves out ffn/,
      ],
    ] as const) {
      const r = vcompile('tune', modelFile, '--data', dataFile, ...flags, '-o', out);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`^vcompile: ${message.source}.*\\n$`));
    }
    expect(fs.existsSync(out)).toBe(false);
  });

  it('Ctrl-C stops the search; a second Ctrl-C quits (130) and leaves no work folder or output behind', async () => {
    const tmp = fs.mkdtempSync(path.join(dir, 'tmp-'));
    const out = path.join(dir, 'quit.onnx');
    const child = spawn(
      process.execPath,
      [path.join(repo, 'bin/vcompile'), 'tune', modelFile, '--data', dataFile, '--budget', 'kl<=1', ...timing, '-o', out],
      { env: { ...process.env, TMPDIR: tmp } },
    );
    let stderr = '';
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
      if (stderr.includes('stopping the search')) child.kill('SIGINT');
    });
    const work = () => fs.readdirSync(tmp).filter((f) => f.startsWith('vcompile-tune-'));
    // the first Ctrl-C once the search holds its work folder
    const started = Date.now();
    while (work().length === 0 && child.exitCode === null && Date.now() - started < 60_000) await new Promise((r) => setTimeout(r, 50));
    expect(work()).toHaveLength(1);
    child.kill('SIGINT');
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code).toBe(130);
    expect(stderr).toMatch(
      /vcompile: stopping the search; writing the best model so far \(Ctrl-C again to quit\)\nvcompile: interrupted by SIGINT \(removed 1 temporary folder\)\n$/,
    );
    expect(work()).toEqual([]);
    expect(fs.existsSync(out)).toBe(false);
  }, 120_000);
});
