#!/usr/bin/env node
// node transformers-js.mjs BUNDLE [TEXT ...] [--input FILE.jsonl]
// The same bundle through transformers.js (@huggingface/transformers), as a local model: needs a bundle
// written with `--layout transformers.js` (onnx/model.onnx or onnx/model_quantized.onnx + config.json).
// One JSON line per input, one pipeline call per input (so int8 runs one sequence per call, like bertedge).
//   text-classification: pipeline("text-classification")  -> {label, score}
//   sentence pairs: the pipeline takes no text_pair, so AutoTokenizer + AutoModelForSequenceClassification
//   token-classification: pipeline("token-classification") -> [{entity, score, index, word}] per word piece
//   question-answering: pipeline("question-answering")     -> {answer, score} (one window: no doc stride)
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { env, pipeline, AutoTokenizer, AutoModelForSequenceClassification, softmax } from "@huggingface/transformers";

env.allowRemoteModels = false; // never reach for the Hub: the bundle is a local directory

const args = process.argv.slice(2);
const positional = [];
let input = null;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--input") input = args[++i];
  else positional.push(args[i]);
}
const [dir, ...texts] = positional;
const items = texts.map((t) => (t.trimStart().startsWith("{") ? JSON.parse(t) : t));
if (input) for (const line of readFileSync(input, "utf8").split("\n")) if (line.trim()) items.push(JSON.parse(line));

const manifest = JSON.parse(readFileSync(join(dir, "bertedge.json"), "utf8"));
const kind = manifest.interface.input_kind;
const options = { local_files_only: true };
const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");

if (kind === "sentence-pair") {
  const tokenizer = await AutoTokenizer.from_pretrained(dir, options);
  const model = await AutoModelForSequenceClassification.from_pretrained(dir, options);
  for (const item of items) {
    const inputs = tokenizer(item.text, { text_pair: item.text_pair, truncation: true });
    const { logits } = await model(inputs);
    const values = Array.from(logits.data);
    const probs = softmax(values);
    const best = probs.indexOf(Math.max(...probs));
    out({ label: model.config.id2label[best], score: probs[best], logits: values });
  }
} else {
  const pipe = await pipeline(manifest.task, dir, options);
  for (const item of items) {
    if (manifest.task === "question-answering") out(await pipe(item.question, item.context));
    else if (manifest.task === "token-classification") out({ tokens: await pipe(typeof item === "string" ? item : item.text) });
    else out((await pipe(typeof item === "string" ? item : item.text))[0]);
  }
}
