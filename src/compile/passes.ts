// The passes as a library caller and the CLI use them: the pure passes of passes/, given the loaders of
// src/compile/load.ts, so plugin and module requests can name files and built-ins.
import { type ModularPassOptions, type ModularReport, modularPass as pureModularPass } from '../../passes/modular/index.js';
import type { Pass } from '../../passes/pipeline.js';
import { type PluginPassOptions, type PluginReport, pluginPass as purePluginPass } from '../../passes/plugin/index.js';
import { switchablePass as pureSwitchablePass, type SwitchableOptions, type SwitchableReport } from '../../passes/plugin/switchable.js';
import { loadModule, loadPlugin } from './load.js';

/** Compression plugins on the selected layers (`plugins`: files or builtin:KIND:K[:SCOPE]). */
export function pluginPass(options: PluginPassOptions): Pass<PluginReport> {
  return purePluginPass(options, loadPlugin);
}

/** One model for every plugin ratio, chosen at run time by the input vcompile_ratio. */
export function switchablePass(options: SwitchableOptions): Pass<SwitchableReport> {
  return pureSwitchablePass(options, loadPlugin);
}

/** Runs of layers replaced by module files or built-in modules. */
export function modularPass(options: ModularPassOptions): Pass<ModularReport> {
  return pureModularPass(options, loadModule);
}
