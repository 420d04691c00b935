#!/usr/bin/env node
// node parity.mjs BUNDLE INPUTS REFERENCE.jsonl [--batch-size N] [--atol X] [--full-depth]
// Runs the bundle here (onnxruntime-node + @huggingface/tokenizers) on INPUTS (.jsonl or .txt) and compares it
// with REFERENCE, the output of `bertedge predict BUNDLE --input INPUTS --logits --output REFERENCE.jsonl`
// at the same --batch-size: labels / entity spans / answer spans must be equal, and the raw outputs within
// --atol (default 1e-4; int8 bundles at the same batching should give 0). Early-exit bundles: the exit layers
// must be equal too (--full-depth: against `bertedge predict --full-depth`). Prints a JSON summary; exit 1 on a mismatch.
import { readFileSync } from "node:fs";
import { loadBundle } from "./lib/node.mjs";

const args = process.argv.slice(2);
const positional = [];
let batchSize = 32;
let atol = 1e-4;
let fullDepth = false;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--batch-size") batchSize = Number(args[++i]);
  else if (args[i] === "--atol") atol = Number(args[++i]);
  else if (args[i] === "--full-depth") fullDepth = true;
  else positional.push(args[i]);
}
const [dir, inputPath, referencePath] = positional;
const lines = (path) => readFileSync(path, "utf8").split("\n").filter((l) => l.trim());
const items = inputPath.endsWith(".jsonl") ? lines(inputPath).map((l) => JSON.parse(l)) : lines(inputPath);
const reference = lines(referencePath).map((l) => JSON.parse(l));
const bundle = await loadBundle(dir, { fullDepth });
const predictions = await bundle.predict(items, { batchSize, logits: true });

const key = (p) => JSON.stringify(
  bundle.task === "text-classification" ? (bundle.earlyExit ? [p.label, p.exit_layer] : p.label)
    : bundle.task === "token-classification" ? p.entities.map((e) => [e.entity, e.first_word, e.last_word, e.start, e.end])
      : [p.start, p.end, p.answer]);
let maxDiff = 0;
const mismatches = [];
const flat = (v) => (Array.isArray(v) ? v.flatMap(flat) : [v]);
predictions.forEach((p, i) => {
  const r = reference[i];
  if (key(p) !== key(r)) mismatches.push({ input: i + 1, node: JSON.parse(key(p)), bertedge: JSON.parse(key(r)) });
  if (p.outputs.length !== r.outputs.length) mismatches.push({ input: i + 1, windows: [p.outputs.length, r.outputs.length] });
  p.outputs.forEach((window, w) => {
    for (const [name, values] of Object.entries(window)) {
      const a = flat(values);
      const b = flat(r.outputs[w][name]);
      if (a.length !== b.length) mismatches.push({ input: i + 1, output: name, lengths: [a.length, b.length] });
      a.forEach((x, k) => { maxDiff = Math.max(maxDiff, Math.abs(x - b[k])); });
    }
  });
});
const summary = { bundle: dir, task: bundle.task, inputs: items.length, batching: bundle.perSequence ? "per-sequence" : `batches of ${batchSize}`,
  predictions_equal: items.length - new Set(mismatches.map((m) => m.input)).size, max_abs_output_diff: maxDiff, atol,
  ok: mismatches.length === 0 && maxDiff <= atol && predictions.length === reference.length, mismatches };
if (bundle.earlyExit) {
  summary.exit_histogram = Object.fromEntries(bundle.segments.map((_, k) => [String(k + 1), 0]));
  for (const p of predictions) summary.exit_histogram[String(p.exit_layer)] += 1;
  summary.full_depth = bundle.fullDepth;
}
console.log(JSON.stringify(summary));
process.exit(summary.ok ? 0 : 1);
