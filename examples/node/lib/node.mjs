// Load a bertedge bundle in Node: onnxruntime-node for the graph, @huggingface/tokenizers for tokenizer.json.
import { existsSync, readFileSync } from "node:fs";
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
 * @param {string} [options.modelFile]     default model.onnx (early-exit bundles: their segment files)
 * @param {boolean} [options.fullDepth]    early-exit bundles: run every layer
 * @param {string} [options.rule]          early-exit bundles: entropy, max-prob or patience (default: the manifest's)
 * @param {number} [options.threshold]     early-exit bundles: the rule's threshold (default: the manifest's)
 */
export async function loadBundle(dir, { perSequence, threads, modelFile, fullDepth, rule, threshold } = {}) {
  const manifest = readJson(dir, "bertedge.json");
  const tokenizerJson = readJson(dir, "tokenizer.json");
  const tokenizerConfig = readJson(dir, "tokenizer_config.json");
  const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
  const sessionOptions = { graphOptimizationLevel: "all", ...(threads ? { intraOpNumThreads: threads } : {}) };
  const exits = manifest.early_exit?.segments || [];
  if (exits.length && modelFile) {
    throw new Error(`${dir}: an early-exit bundle has no ${modelFile}; it runs its segment graphs (bertedge.json early_exit.segments)`);
  }
  const files = exits.length ? exits.map((s) => s.file) : [modelFile || "model.onnx"];
  for (const file of files) {
    if (existsSync(join(dir, file))) continue;
    throw new Error(exits.length ? `${dir}: the early-exit bundle has no ${file} (bertedge.json early_exit.segments); re-export it`
      : `${dir}: not an ONNX bundle (no ${file}); pass a directory written by bertedge export or quantize`);
  }
  const sessions = [];
  for (const file of files) sessions.push(await ort.InferenceSession.create(join(dir, file), sessionOptions));
  return new BertedgeBundle({ manifest, tokenizer, tokenizerJson, session: sessions[0],
    segments: exits.length ? sessions : undefined, ort, perSequence, fullDepth, rule, threshold });
}
