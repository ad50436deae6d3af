// Validates an AsyncAPI document with the AsyncAPI project's own parser (@asyncapi/parser, pinned in
// package.json): one JSON line per diagnostic on stdout ({severity, code, message, path}; severity 0 is an error,
// 1 a warning, 2 information, 3 a hint), exit 1 when any is an error or the document could not be parsed.
// Usage: node tests/asyncapi/validate.mjs schemas/asyncapi.json
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const [file] = process.argv.slice(2);
if (!file) {
  console.error('usage: node validate.mjs DOCUMENT');
  process.exit(2);
}
const { document, diagnostics } = await new Parser().parse(readFileSync(file, 'utf8'), { source: file });
for (const { severity, code, message, path } of diagnostics) {
  console.log(JSON.stringify({ severity, code, message, path: path.join('/') }));
}
process.exit(document === undefined || diagnostics.some((d) => d.severity === 0) ? 1 : 0);
