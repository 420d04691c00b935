#!/usr/bin/env node
// node predict.mjs BUNDLE [TEXT ...] [--input FILE.jsonl|.txt] [--logits] [--batch-size N] [--per-sequence|--batched]
// One JSON line per input, the fields of `bertedge predict` (a TEXT starting with "{" is a JSON object:
// {"text", "text_pair"} for pairs, {"question", "context"} for QA, {"tokens": [...]} for NER).
import { readFileSync } from "node:fs";
import { loadBundle } from "./lib/node.mjs";

const args = process.argv.slice(2);
const options = { logits: false, batchSize: 32, perSequence: undefined, input: null };
const positional = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--logits") options.logits = true;
  else if (a === "--batch-size") options.batchSize = Number(args[++i]);
  else if (a === "--per-sequence") options.perSequence = true;
  else if (a === "--batched") options.perSequence = false;
  else if (a === "--input") options.input = args[++i];
  else if (a === "--threads") options.threads = Number(args[++i]);
  else if (a.startsWith("--")) throw new Error(`unknown option ${a}`);
  else positional.push(a);
}
if (!positional.length) {
  console.error("usage: node predict.mjs BUNDLE [TEXT ...] [--input FILE] [--logits] [--batch-size N] [--per-sequence|--batched]");
  process.exit(2);
}
const [dir, ...texts] = positional;
const items = texts.map((t) => (t.trimStart().startsWith("{") ? JSON.parse(t) : t));
if (options.input) {
  const lines = readFileSync(options.input, "utf8").split("\n");
  const jsonl = options.input.endsWith(".jsonl");
  for (const line of lines) {
    if (jsonl) { if (line.trim()) items.push(JSON.parse(line)); } else if (line.length) items.push(line);
  }
}
const bundle = await loadBundle(dir, { perSequence: options.perSequence, threads: options.threads });
const start = performance.now();
const predictions = await bundle.predict(items, { batchSize: options.batchSize, logits: options.logits });
for (const [i, p] of predictions.entries()) {
  const item = items[i];
  const record = {};
  if (item && typeof item === "object" && "id" in item) record.id = item.id;
  process.stdout.write(JSON.stringify({ ...record, input: i + 1, ...p }) + "\n");
}
console.error(`predicted ${items.length} input(s) in ${((performance.now() - start) / 1000).toFixed(2)}s ` +
  `(${bundle.perSequence ? "one sequence per call" : `batches of ${options.batchSize}`})`);
