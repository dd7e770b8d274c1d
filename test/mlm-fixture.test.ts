// The trained masked LM (fixtures/mlm, trained and measured by make_mlm.py in PyTorch) checked through
// the command line: vcompile's task figures on the user's data equal PyTorch's, for the model as it is (in
// every data format the fixture ships) and compressed with the built-in mean plugins at each scope.
// PyTorch evaluates its own modules, so this is an independent reference for the data loading, the
// masking of padding, the metrics and the plugin rewrite on a model that has learned a task.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, it } from 'vitest';

const repo = path.resolve(import.meta.dirname, '..');
const MLM = 'fixtures/mlm/mlm.onnx';
const metrics = JSON.parse(fs.readFileSync(path.join(repo, 'fixtures/mlm/metrics.json'), 'utf8'));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-mlm-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

interface TaskFigures {
  accuracy: { original: number; rewritten: number };
  loss: { original: number; rewritten: number };
}

/** `vcompile MLM ... --data DATA --json`: the task figures of the logits output. */
function taskFigures(args: string[], data: string): Promise<TaskFigures> {
  const out = path.join(dir, `${args.join('_').replace(/[^a-z0-9]/gi, '_')}_${path.basename(data)}.onnx`);
  const argv = [path.join(repo, 'bin/vcompile'), MLM, ...args, '-o', out, '--data', data, '--json'];
  return new Promise((resolve, reject) => {
    execFile(process.execPath, argv, { cwd: repo, timeout: 240_000 }, (error, stdout, stderr) => {
      if (error) return reject(new Error(`vcompile ${argv.slice(1).join(' ')}: ${stderr}`));
      const logits = JSON.parse(stdout).verify.outputs.find((o: { name: string }) => o.name === 'logits');
      resolve(logits.task);
    });
  });
}

// float32 logits in ONNX Runtime against float32 PyTorch: the loss agrees to ~1e-7 relative; an argmax can
// flip on a near tie, so accuracy is compared to 3 decimals (4 masked tokens in 4,431).
describe.concurrent('trained masked LM: figures on data equal PyTorch', () => {
  it('the original on eval.jsonl and eval_padded/ (the same rows, padded)', async ({ expect }) => {
    const figures = await Promise.all(
      ['fixtures/mlm/eval.jsonl', 'fixtures/mlm/eval_padded'].map((d) => taskFigures(['--plugin', 'builtin:mean:2:ffn'], d)),
    );
    const [jsonl, padded] = figures as [TaskFigures, TaskFigures];
    expect(jsonl.accuracy.original).toBeCloseTo(metrics.original.eval_jsonl.accuracy, 3);
    expect(jsonl.loss.original).toBeCloseTo(metrics.original.eval_jsonl.loss, 4);
    expect(padded.loss.original).toBeCloseTo(metrics.original.eval_padded.loss, 4);
    // padding masked by attention_mask: the padded rows score as the ragged ones
    expect(padded.loss.original).toBeCloseTo(jsonl.loss.original, 4);
  }, 240_000);

  for (const [scope, k] of [
    ['ffn', 2],
    ['layer', 2],
  ] as const) {
    it(`builtin:mean:${k}:${scope} on eval/`, async ({ expect }) => {
      const figures = await taskFigures(['--plugin', `builtin:mean:${k}:${scope}`], 'fixtures/mlm/eval');
      const reference = metrics.plugins.eval[`${scope}_k${k}`];
      expect(figures.accuracy.original).toBeCloseTo(metrics.original.eval.accuracy, 3);
      expect(figures.loss.original).toBeCloseTo(metrics.original.eval.loss, 4);
      expect(figures.accuracy.rewritten).toBeCloseTo(reference.accuracy, 3);
      expect(figures.loss.rewritten).toBeCloseTo(reference.loss, 4);
      // a real task: compression costs accuracy, and not all of it
      expect(figures.accuracy.rewritten).toBeLessThan(figures.accuracy.original);
      expect(figures.accuracy.rewritten).toBeGreaterThan(metrics.unigram_baseline.eval.accuracy);
    }, 240_000);
  }
});
