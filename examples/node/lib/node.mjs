// Load a bertedge bundle in Node: onnxruntime-node for the graph, @huggingface/tokenizers for tokenizer.json.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { Tokenizer } from "@huggingface/tokenizers";
import { BertedgeBundle } from "./bertedge.mjs";

const readJson = (dir, name) => JSON.parse(readFileSync(join(dir, name), "utf8"));

/**
 * @param {string} dir  a bundle written by `bertedge export` or `bertedge quantize`
 * @param {object} [options]
 * @param {boolean} [options.perSequence]  one sequence per call (default: on for batch-dependent int8 bundles)
 * @param {number} [options.threads]       intra-op threads (default: ONNX Runtime's choice)
 * @param {string} [options.modelFile]     default model.onnx
 */
export async function loadBundle(dir, { perSequence, threads, modelFile = "model.onnx" } = {}) {
  const manifest = readJson(dir, "bertedge.json");
  const tokenizerJson = readJson(dir, "tokenizer.json");
  const tokenizerConfig = readJson(dir, "tokenizer_config.json");
  const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
  const sessionOptions = { graphOptimizationLevel: "all", ...(threads ? { intraOpNumThreads: threads } : {}) };
  const session = await ort.InferenceSession.create(join(dir, modelFile), sessionOptions);
  return new BertedgeBundle({ manifest, tokenizer, tokenizerJson, session, ort, perSequence });
}
