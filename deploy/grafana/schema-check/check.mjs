// node check.mjs DASHBOARD.json...: each file against types.ts (Grafana's own schema types, see there), compiled by
// TypeScript in memory as `export const dashboard = <the file's JSON> satisfies LpuDashboard`. Prints every error
// with its line in the file (the JSON is re-indented by two spaces, as the files are written) and exits 1 if any.
// TypeScript reports an unknown key of an object only once the values inside that object are right: fix and rerun.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const here = path.dirname(fileURLToPath(import.meta.url));
const options = {
  strict: true,
  noEmit: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.ESNext,
  moduleResolution: ts.ModuleResolutionKind.Bundler,
  types: [],
};
const PREAMBLE = "import type { LpuDashboard } from './types';\nexport const dashboard = ";

// The library and @grafana/schema declarations are parsed once and shared by every file's program.
const parsed = new Map();
const host = ts.createCompilerHost(options);
const { getSourceFile, fileExists, readFile } = host;
const virtual = path.join(here, '__dashboard__.ts'); // never written: served by the compiler host below
let source = '';
host.getSourceFile = (name, ...rest) => {
  if (name === virtual) return ts.createSourceFile(name, source, ts.ScriptTarget.ES2022, true);
  if (!parsed.has(name)) parsed.set(name, getSourceFile(name, ...rest));
  return parsed.get(name);
};
host.fileExists = (name) => name === virtual || fileExists(name);
host.readFile = (name) => (name === virtual ? source : readFile(name));

function check(file) {
  const json = JSON.stringify(JSON.parse(readFileSync(file, 'utf8')), null, 2);
  source = `${PREAMBLE}${json} satisfies LpuDashboard;\n`;
  const program = ts.createProgram([virtual], options, host);
  const diagnostics = ts.getPreEmitDiagnostics(program);
  for (const d of diagnostics) {
    const text = ts.flattenDiagnosticMessageText(d.messageText, '\n  ');
    if (d.file && d.file.fileName === virtual && d.start !== undefined) {
      const { line } = d.file.getLineAndCharacterOfPosition(d.start);
      console.log(`${file}:${line}: ${text}`); // line 0 of the JSON is the preamble's second line
    } else {
      console.log(`${file}: ${d.file ? d.file.fileName + ': ' : ''}${text}`);
    }
  }
  return diagnostics.length;
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node check.mjs DASHBOARD.json...');
  process.exit(2);
}
let errors = 0;
for (const file of files) errors += check(file);
console.log(`${files.length} dashboard(s) checked against @grafana/schema: ${errors} error(s)`);
process.exit(errors ? 1 : 0);
