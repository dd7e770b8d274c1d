// The version vcompile records in the models it writes and prints for --version: package.json's.
import pkg from '../package.json' with { type: 'json' };

export const VCOMPILE_VERSION: string = pkg.version;
