#!/usr/bin/env node
// node predict.mjs BUNDLE [TEXT ...] [--input FILE.jsonl|.txt] [--logits] [--batch-size N] [--per-sequence|--batched]
//                   [--full-depth] [--rule entropy|max-prob|patience --threshold X]
// One JSON line per input, the fields of `bertedge predict` (a TEXT starting with "{" is a JSON object:
// {"text", "text_pair"} for pairs, {"question", "context"} for QA, {"tokens": [...]} for NER).
// Early-exit bundles add "exit_layer"; --full-depth runs every layer, --rule/--threshold override the manifest's.
import { readFileSync } from "node:fs";
import { loadBundle } from "./lib/node.mjs";

const USAGE = "usage: node predict.mjs BUNDLE [TEXT ...] [--input FILE] [--logits] [--batch-size N] " +
  "[--per-sequence|--batched] [--threads N] [--full-depth] [--rule RULE] [--threshold X]";
const fail = (message) => {
  console.error(`error: ${message}`);
  process.exit(2);
};
const args = process.argv.slice(2);
const options = { logits: false, batchSize: 32, perSequence: undefined, input: null };
const positional = [];
const value = (i) => (i < args.length ? args[i] : fail(`${args[i - 1]} needs a value\n${USAGE}`));
const number = (i) => {
  const text = value(i);
  const n = Number(text);
  return text.trim() !== "" && Number.isFinite(n) ? n : fail(`${args[i - 1]}: '${text}' is not a number`);
};
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--logits") options.logits = true;
  else if (a === "--batch-size") options.batchSize = number(++i);
  else if (a === "--per-sequence") options.perSequence = true;
  else if (a === "--batched") options.perSequence = false;
  else if (a === "--input") options.input = value(++i);
  else if (a === "--threads") options.threads = number(++i);
  else if (a === "--full-depth") options.fullDepth = true;
  else if (a === "--rule") options.rule = value(++i);
  else if (a === "--threshold") options.threshold = number(++i);
  else if (a.startsWith("--")) fail(`unknown option ${a}\n${USAGE}`);
  else positional.push(a);
}
if (!positional.length) fail(`no bundle\n${USAGE}`);
if (!Number.isInteger(options.batchSize) || options.batchSize < 1) fail("--batch-size must be a whole number, at least 1");
const [dir, ...texts] = positional;
const items = texts.map((t) => (t.trimStart().startsWith("{") ? JSON.parse(t) : t));
if (options.input) {
  const lines = readFileSync(options.input, "utf8").split("\n");
  const jsonl = options.input.endsWith(".jsonl");
  for (const line of lines) {
    if (jsonl) { if (line.trim()) items.push(JSON.parse(line)); } else if (line.length) items.push(line);
  }
}
let bundle;
try {
  bundle = await loadBundle(dir, { perSequence: options.perSequence, threads: options.threads,
    fullDepth: options.fullDepth, rule: options.rule, threshold: options.threshold });
} catch (error) {
  fail(error.message);
}
const start = performance.now();
const predictions = await bundle.predict(items, { batchSize: options.batchSize, logits: options.logits });
for (const [i, p] of predictions.entries()) {
  const item = items[i];
  const record = {};
  if (item && typeof item === "object" && "id" in item) record.id = item.id;
  process.stdout.write(JSON.stringify({ ...record, input: i + 1, ...p }) + "\n");
}
let exits = "";
if (bundle.earlyExit) {
  const histogram = Object.fromEntries(bundle.segments.map((_, k) => [String(k + 1), 0]));
  for (const p of predictions) histogram[String(p.exit_layer)] += 1;
  exits = `; ${bundle.fullDepth ? "full depth" : `exits ${bundle.rule} ${bundle.threshold}`}, exit layers ` +
    `${JSON.stringify(histogram)}, segment calls ${JSON.stringify(bundle.segmentCalls)}`;
}
console.error(`predicted ${items.length} input(s) in ${((performance.now() - start) / 1000).toFixed(2)}s ` +
  `(${bundle.perSequence ? "one sequence per call" : `batches of ${options.batchSize}`}${exits})`);
