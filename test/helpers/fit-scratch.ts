// What the fit tests (plugins, stream target, modules) share: a scratch folder of generated transformers,
// random token data, and models compiled with what a fit returned.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Model } from '../../src/ir/model.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType } from '../../src/ir/types.js';
import { saveModel } from '../../src/onnx/file.js';
import { Rng } from '../../src/random.js';
import { vcompile } from './cli.js';
import { buildTransformer, type TransformerConfig } from './transformer-gen.js';

/** The plugin fit tests' transformer: 2 post-LN layers, hidden 16, ReLU FFN of 32, padding mask. */
export const PLUGIN_FIT_BASE: TransformerConfig = {
  layers: 2,
  hidden: 16,
  heads: 2,
  ffnInner: 32,
  norm: 'post',
  activation: 'relu',
  bias: true,
  mask: true,
  causal: false,
  vocab: 50,
  seed: 5,
};

/** Changes a float initializer's values in place, by its name. */
export type WeightEdit = (values: Float32Array, name: string) => void;

export class FitScratch {
  readonly dir: string;

  constructor(
    prefix: string,
    readonly base: TransformerConfig,
  ) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  }

  /** A generated transformer (`base` with `config`), its float initializers changed by `edit`, written; returns its path. */
  model(name: string, config: Partial<TransformerConfig>, edit?: WeightEdit): string {
    const m = buildTransformer({ ...this.base, ...config });
    if (edit) {
      for (const v of m.graph.initializers) {
        if (v.initializer?.dataType !== DataType.FLOAT) continue;
        const values = v.initializer.toFloat32();
        edit(values, v.name);
        v.initializer = Tensor.fromArray(v.name, DataType.FLOAT, v.initializer.dims, values);
      }
    }
    const file = path.join(this.dir, `${name}.onnx`);
    saveModel(m, file);
    return file;
  }

  /** `samples` rows of random token ids (`length` to `length` + 8 long), as .jsonl; returns its path. */
  data(name: string, samples: number, seed = 1, vocab = this.base.vocab, length = 12): string {
    if (vocab === undefined) throw new Error('fit scratch data: no vocabulary size');
    const rng = new Rng(seed, name);
    const rows = Array.from({ length: samples }, (_, i) => ({
      input_ids: Array.from({ length: length + (i % 9) }, () => Math.floor(rng.next() * vocab)),
    }));
    const file = path.join(this.dir, `${name}.jsonl`);
    fs.writeFileSync(file, `${rows.map((r) => JSON.stringify(r)).join('\n')}\n`);
    return file;
  }

  /** `file` compiled with `plugins` (layer -> plugin model), written; returns its path. */
  withPlugins(file: string, plugins: Map<number, Model>, name: string): string {
    const args: string[] = [];
    for (const [layer, plugin] of plugins) args.push('--plugin', `${layer}=${this.saved(plugin, `${name}-L${layer}`)}`);
    return this.compiled(file, args, name);
  }

  /** `file` compiled with `modules` (key L{S}-{E} -> module, or --module values as they are), written; returns its path. */
  withModules(file: string, modules: Map<string, Model> | string[], name: string): string {
    const args: string[] = [];
    if (Array.isArray(modules)) for (const m of modules) args.push('--module', m);
    else for (const [key, module] of modules) args.push('--module', `${key.slice(1)}=${this.saved(module, `${name}-${key}`)}`);
    return this.compiled(file, args, name);
  }

  private saved(model: Model, name: string): string {
    const file = path.join(this.dir, `${name}.onnx`);
    saveModel(model, file);
    return file;
  }

  private compiled(file: string, args: string[], name: string): string {
    const out = path.join(this.dir, `${name}.onnx`);
    const r = vcompile(file, '-o', out, '--no-verify', ...args);
    if (r.code !== 0) throw new Error(r.stderr);
    return out;
  }
}
