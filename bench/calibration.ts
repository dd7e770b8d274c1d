// Calibration fidelity on the trained masked LM (fixtures/mlm): per scope and ratio, the mean plugins against
// plugins fitted in closed form on fixtures/mlm/calib (default rank and full rank), all scored on
// fixtures/mlm/eval, which no fit sees. "Gap recovered" is (fitted - mean) / (original - mean): 100% is the
// original's figure, 0% the mean plugins'.
//
//   npm run build && node dist/bench/calibration.js [--scopes ffn,attention,layer] [--ratios 2,4] [--ranks default,full]
//     [--fit-targets block,stream] [--units default,0]
//
// Every step is the command line a user would type (printed as it runs), so the figures are the tool's.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const MODEL = 'fixtures/mlm/mlm.onnx';
const CALIB = 'fixtures/mlm/calib';
const EVAL = 'fixtures/mlm/eval';

const { values } = parseArgs({
  options: {
    scopes: { type: 'string', default: 'ffn,attention,layer' },
    ratios: { type: 'string', default: '2,4' },
    ranks: { type: 'string', default: 'default,full' },
    // what the restores are fitted to (vcompile plugin fit --fit-target): one fitted row per target
    'fit-targets': { type: 'string', default: 'block' },
    // full-length units at FFN scope (vcompile plugin fit --units): one fitted row per setting
    units: { type: 'string', default: 'default' },
  },
});

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-calibration-'));

function vcompile(...args: string[]): string {
  process.stderr.write(`$ vcompile ${args.join(' ')}\n`);
  return execFileSync(process.execPath, [path.join(REPO_ROOT, 'bin/vcompile'), ...args], { cwd: REPO_ROOT, encoding: 'utf8' });
}

interface Scores {
  accuracy: number;
  loss: number;
  top1: number;
}

/** The rewritten model's task figures on the evaluation data (and the original's, from the same run). */
function score(rewritten: string): { original: Scores; rewritten: Scores } {
  const report = JSON.parse(vcompile('verify', MODEL, rewritten, '--data', EVAL, '--json'));
  const logits = report.outputs.find((o: { name: string }) => o.name === 'logits');
  const { accuracy, loss } = logits.task;
  return {
    original: { accuracy: accuracy.original, loss: loss.original, top1: 1 },
    rewritten: { accuracy: accuracy.rewritten, loss: loss.rewritten, top1: logits.top1Agreement },
  };
}

const recovered = (fitted: number, mean: number, original: number) => `${(((fitted - mean) / (original - mean)) * 100).toFixed(0)}%`;
const pct = (x: number) => `${(x * 100).toFixed(2)}%`;

console.log(
  '| scope | k | plugins | fit target | rank | units | accuracy | loss | top-1 agreement | gap recovered (accuracy / loss) | fit s |',
);
console.log('|---|---|---|---|---|---|---:|---:|---:|---:|---:|');
let original: Scores | undefined;
for (const scope of values.scopes!.split(',')) {
  for (const k of values.ratios!.split(',')) {
    const meanFile = path.join(work, `mean_${scope}_${k}.onnx`);
    vcompile(MODEL, '--plugin', `builtin:mean:${k}:${scope}`, '-o', meanFile, '--no-verify');
    const mean = score(meanFile);
    if (!original) {
      original = mean.original;
      console.log(`| — | — | original | — | — | — | ${pct(original.accuracy)} | ${original.loss.toFixed(4)} | 100% | | |`);
    }
    const m = mean.rewritten;
    console.log(`| ${scope} | ${k} | mean | — | — | — | ${pct(m.accuracy)} | ${m.loss.toFixed(4)} | ${pct(m.top1)} | 0% / 0% | |`);
    const settings = values
      .ranks!.split(',')
      .flatMap((r) =>
        values['fit-targets']!.split(',').flatMap((t) => (scope === 'ffn' ? values.units!.split(',') : ['default']).map((u) => [r, t, u])),
      );
    for (const [rank, target, units] of settings) {
      const dir = path.join(work, `fit_${scope}_${k}_${rank}_${target}_${units}`);
      const started = Date.now();
      const fit = JSON.parse(
        vcompile(
          'plugin',
          'fit',
          MODEL,
          '--data',
          CALIB,
          '--ratio',
          k,
          '--scope',
          scope,
          ...(rank === 'full' ? ['--rank', 'full'] : []),
          ...(target === 'block' ? [] : ['--fit-target', target]),
          ...(units === 'default' ? [] : ['--units', units]),
          '-o',
          dir,
          '--json',
        ),
      );
      const seconds = (Date.now() - started) / 1000;
      const layers: { layer: number; rank: number | 'full'; units: number[] }[] = fit.layers;
      const fittedFile = path.join(work, `fit_${scope}_${k}_${rank}_${target}_${units}.onnx`);
      vcompile(
        MODEL,
        ...layers.flatMap((l) => ['--plugin', `${l.layer}=${path.join(dir, `L${l.layer}.onnx`)}`]),
        '-o',
        fittedFile,
        '--no-verify',
      );
      const f = score(fittedFile).rewritten;
      console.log(
        `| ${scope} | ${k} | fitted | ${target} | ${layers[0].rank} | ${layers[0].units.length} | ${pct(f.accuracy)} | ${f.loss.toFixed(4)} | ${pct(f.top1)} | ${recovered(f.accuracy, m.accuracy, original.accuracy)} / ${recovered(f.loss, m.loss, original.loss)} | ${seconds.toFixed(0)} |`,
      );
    }
  }
}
fs.rmSync(work, { recursive: true, force: true });
