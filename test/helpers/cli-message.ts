// Library errors name options by reference; the command line writes them as flags. Tests that assert the
// words a user sees run the library call through this, so the text they compare is the CLI's.
import { cliMessage } from '../../src/cli/errors.js';
import { VcompileError } from '../../src/errors.js';

/** `f`, with a VcompileError it throws re-thrown as the line the CLI prints for it. */
export function asCommandLine<T>(f: () => T): () => T {
  return () => {
    try {
      return f();
    } catch (error) {
      if (error instanceof VcompileError) throw new Error(cliMessage(error.parts));
      throw error;
    }
  };
}

/** The same for a call that returns a promise. */
export async function asCommandLineAsync<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (error) {
    if (error instanceof VcompileError) throw new Error(cliMessage(error.parts));
    throw error;
  }
}
