// ONNX's own backend test models come from Debian's libonnx-testdata package. On a machine without it the
// suites that need it are skipped with one line saying how to get it; `.ci/run` installs the package and
// sets VCOMPILE_REQUIRE_TESTDATA=1, which turns a missing package into a failure instead.
import * as fs from 'node:fs';

export const TESTDATA_ROOT = '/usr/share/libonnx-testdata/data';

let warned = false;

/** Whether the backend test models are here; when they are not and not required, says so once. */
export function testdataAvailable(): boolean {
  if (fs.existsSync(TESTDATA_ROOT)) return true;
  if (process.env.VCOMPILE_REQUIRE_TESTDATA === '1') return true; // the suites then fail, naming the folder
  if (!warned) {
    warned = true;
    process.stderr.write(
      `skipping the ONNX backend test-model suites: ${TESTDATA_ROOT} is missing (apt-get install libonnx-testdata; .ci/run installs it)\n`,
    );
  }
  return false;
}
