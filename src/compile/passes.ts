// The passes as a library caller and the CLI use them: the pure passes of passes/, given the loaders of
// src/compile/load.ts, so plugin and module requests can name files and built-ins.
import { type ModularPassOptions, type ModularReport, modularPass as pureModularPass } from '../../passes/modular/index.js';
import type { Pass } from '../../passes/pipeline.js';
import type { Plugin } from '../../passes/plugin/contract.js';
import { type PluginLoader, type PluginPassOptions, type PluginReport, pluginPass as purePluginPass } from '../../passes/plugin/index.js';
import { switchablePass as pureSwitchablePass, type SwitchableOptions, type SwitchableReport } from '../../passes/plugin/switchable.js';
import { loadModule, loadPlugin } from './load.js';

/**
 * Compression plugins on the selected layers (`plugins`: files or builtin:KIND:K[:SCOPE], or the names of
 * plugins already in memory, `given`, such as fitted ones).
 */
export function pluginPass(options: PluginPassOptions, given?: ReadonlyMap<string, Plugin>): Pass<PluginReport> {
  return purePluginPass(options, loaderWith(given));
}

/** One model for every plugin ratio, chosen at run time by the input vcompile_ratio. */
export function switchablePass(options: SwitchableOptions, given?: ReadonlyMap<string, Plugin>): Pass<SwitchableReport> {
  return pureSwitchablePass(options, loaderWith(given));
}

function loaderWith(given: ReadonlyMap<string, Plugin> | undefined): PluginLoader {
  return (source, target) => given?.get(source) ?? loadPlugin(source, target);
}

/** Runs of layers replaced by module files or built-in modules. */
export function modularPass(options: ModularPassOptions): Pass<ModularReport> {
  return pureModularPass(options, loadModule);
}
