// Plugin and module files, read and checked: the passes take them as IR models (passes/plugin/contract.ts,
// passes/modular/contract.ts hold the contracts); this is where the bytes come from. A `builtin:` plugin
// is generated for the model it will join (its hidden size and opset). Each file is read once.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkModuleContract, type Module } from '../../passes/modular/contract.js';
import { spanName } from '../../passes/modular/span.js';
import { upgradeOpset } from '../../passes/opset/index.js';
import {
  type BuiltinKind,
  buildIdentityPlugin,
  buildMeanPlugin,
  buildVariatorPlugin,
  initVariatorWeights,
  VARIATOR_BOTTLENECK,
} from '../../passes/plugin/builtin.js';
import { checkPluginContract, type Plugin, parseBuiltin } from '../../passes/plugin/contract.js';
import { msg, option, VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { decodeModel, describeFsError, encodeModel, readFileOrFail } from '../onnx/file.js';

/** What a `builtin:` plugin is generated for. */
export interface PluginTarget {
  hidden: number;
  opset: number;
}

/**
 * The most a built-in plugin's weights may take: they are generated in memory and written inline. About 70
 * times what a large real one needs (Variator with k = 16 at hidden size 8192: 14.7 MB), and well under
 * protobuf's 2 GiB.
 */
export const MAX_BUILTIN_PLUGIN_BYTES = 2 ** 30;

/** The bytes of a built-in plugin's weights at ratio k and hidden size d (float32). */
export function builtinPluginBytes(kind: BuiltinKind, k: number, d: number): number {
  if (kind !== 'variator') return 0;
  const b = VARIATOR_BOTTLENECK;
  return 4 * (k * k * d + k + 2 * d * b + b + d * b + d);
}

/** `1.5 GiB`, `12.0 MiB`: a size for messages. */
export function formatBytes(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** A plugin file, or `builtin:KIND:K[:SCOPE]` generated for `target`, checked against the contract. */
export function loadPlugin(source: string, target: PluginTarget): Plugin {
  const builtin = parseBuiltin(source);
  if (builtin) {
    const bytes = builtinPluginBytes(builtin.kind, builtin.ratio, target.hidden);
    if (bytes > MAX_BUILTIN_PLUGIN_BYTES)
      throw new VcompileError(
        `plugin ${source}: its weights would take ${formatBytes(bytes)} at the model's hidden size ${target.hidden}, over the ${formatBytes(MAX_BUILTIN_PLUGIN_BYTES)} a built-in plugin may take (use a smaller ratio)`,
      );
    const shape = { ratio: builtin.ratio, hidden: target.hidden, scope: builtin.scope, opset: target.opset };
    const model =
      builtin.kind === 'mean'
        ? buildMeanPlugin(shape)
        : builtin.kind === 'identity'
          ? buildIdentityPlugin(shape)
          : buildVariatorPlugin(shape, initVariatorWeights(builtin.ratio, target.hidden, { seed: 0 }));
    return checkPlugin(model, source, encodeModel(model));
  }
  const bytes = readFileOrFail(source, `plugin ${source}`);
  const model = decodeModel(bytes, { baseDir: path.dirname(source), label: `plugin ${source}` });
  raiseOpset(model, target.opset, `plugin ${source}`);
  return checkPlugin(model, source, bytes);
}

/**
 * A plugin or module exported at an older opset than the model's is upgraded to the model's (exactly, or
 * refused naming the node), so that its ops mean what the model's do. A newer one is left alone: the
 * model is upgraded instead (see `requiredOpset`), or the merge check refuses.
 */
function raiseOpset(model: Model, opset: number, what: string): void {
  const own = model.opsetVersion('');
  if (own === undefined || own >= opset) return;
  try {
    upgradeOpset(model, opset);
  } catch (error) {
    if (error instanceof VcompileError) throw error.wrapped(`${what}: `);
    throw error;
  }
}

/**
 * The default-domain opset a model must have for these plugin and module files: the newest any of them
 * declares, and at least `floor` (built-in plugins are generated at the model's own opset). `label` names a
 * file in messages (`plugin p.onnx`).
 */
export function requiredOpset(files: readonly { source: string; label: string }[], floor: number): number {
  let needed = floor;
  for (const { source, label } of files) {
    if (source.startsWith('builtin:')) continue;
    const model = decodeModel(readFileOrFail(source, label), { baseDir: path.dirname(source), label });
    needed = Math.max(needed, model.opsetVersion('') ?? 0);
  }
  return needed;
}

/** Check a plugin model (whose file bytes are `bytes`) against the contract; a violation is a one-line error naming it. */
export function checkPlugin(model: Model, source: string, bytes: Uint8Array): Plugin {
  return checkPluginContract(model, source, sha256(bytes));
}

/** A module file, checked against the contract, at the model's opset (`target`) or newer. */
export function loadModule(source: string, target?: { opset: number }): Module {
  const bytes = readFileOrFail(source, `module ${source}`);
  const model = decodeModel(bytes, { baseDir: path.dirname(source), label: `module ${source}` });
  if (target) raiseOpset(model, target.opset, `module ${source}`);
  return checkModuleContract(model, source, sha256(bytes));
}

/** A module found in a folder, with the layers it was made for and where that came from. */
export interface FoundModule {
  file: string;
  module: Module;
  start: number;
  end: number;
  startFrom: 'metadata' | 'file name';
}

/**
 * Every .onnx file of `dir` as a module, with the layers it was made for: its metadata vcompile.start
 * when present, else its file name `...L{START}-{END}.onnx`; a module with neither is refused.
 */
export function discoverModules(dir: string): FoundModule[] {
  let entries: string[];
  try {
    entries = fs
      .readdirSync(dir)
      .filter((f) => f.toLowerCase().endsWith('.onnx'))
      .sort();
  } catch (error) {
    throw new VcompileError(msg`${option('modulesDir', dir)}: ${describeFsError(error)}`);
  }
  if (entries.length === 0) throw new VcompileError(msg`${option('modulesDir', dir)}: no .onnx files`);
  return entries.map((entry) => {
    const file = path.join(dir, entry);
    const module = loadModule(file);
    if (module.start !== undefined)
      return { file, module, start: module.start, end: module.start + module.span - 1, startFrom: 'metadata' as const };
    const named = spanFromFileName(file);
    if (!named)
      throw new VcompileError(
        `module ${file}: cannot tell which layers it was made for: set metadata vcompile.start, or name the file *L{START}-{END}.onnx`,
      );
    const count = named.end - named.start + 1;
    if (count !== module.span)
      throw new VcompileError(
        `module ${file}: its name says ${spanName(named.start, named.end)} (${count} layers) but vcompile.span = ${module.span}`,
      );
    return { file, module, start: named.start, end: named.end, startFrom: 'file name' as const };
  });
}

/** `...L{START}-{END}.onnx`: the layers a module file is named for. */
export function spanFromFileName(file: string): { start: number; end: number } | undefined {
  const match = /L(\d+)-(\d+)\.onnx$/i.exec(path.basename(file));
  return match ? { start: Number(match[1]), end: Number(match[2]) } : undefined;
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
