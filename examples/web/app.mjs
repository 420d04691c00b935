// The page: load the bundle at ?bundle=URL (default ./bundle/) with onnxruntime-web (wasm) and the bundle's
// tokenizer.json with @huggingface/tokenizers, then classify what is typed. Pre- and postprocessing are
// bertedge's own, ported in ../node/lib/bertedge.mjs (served here as ./lib/bertedge.mjs).
import * as ort from "onnxruntime-web";
import { Tokenizer } from "@huggingface/tokenizers";
import { BertedgeBundle } from "bertedge";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const base = new URL(params.get("bundle") || "./bundle/", location.href);
// One thread: several need a cross-origin-isolated page (COOP/COEP headers), which a plain static host lacks.
ort.env.wasm.numThreads = Number(params.get("threads") || 1);
ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", location.href).href;

async function fetchOk(name) {
  const response = await fetch(new URL(name, base));
  if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
  return response;
}

async function load() {
  const [manifest, tokenizerJson, tokenizerConfig, model] = await Promise.all([
    fetchOk("bertedge.json").then((r) => r.json()), fetchOk("tokenizer.json").then((r) => r.json()),
    fetchOk("tokenizer_config.json").then((r) => r.json()), fetchOk("model.onnx").then((r) => r.arrayBuffer())]);
  if (manifest.task !== "text-classification") throw new Error(`this page classifies texts; the bundle is ${manifest.task}`);
  const started = performance.now();
  const session = await ort.InferenceSession.create(new Uint8Array(model), {
    executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const bundle = new BertedgeBundle({ manifest, tokenizer: new Tokenizer(tokenizerJson, tokenizerConfig), tokenizerJson, session, ort });
  const precision = (manifest.onnx || {}).precision || "fp32";
  $("meta").textContent = `${manifest.task}, ${precision}, ${(model.byteLength / 1e6).toFixed(1)} MB, ` +
    `onnxruntime-web ${ort.env.versions?.web ?? ""} wasm, session ready in ${(performance.now() - started).toFixed(0)} ms`;
  return bundle;
}

function show(prediction, ms) {
  $("label").textContent = prediction.label;
  const rows = Object.entries(prediction.scores).sort((a, b) => b[1] - a[1]);
  $("scores").replaceChildren(...rows.map(([name, p]) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td class="name"></td><td class="score">${p.toFixed(4)}</td>` +
      `<td><span class="bar" style="width:${(p * 12).toFixed(2)}rem"></span></td>`;
    tr.querySelector(".name").textContent = name;
    return tr;
  }));
  $("latency").textContent = `latency ${ms.toFixed(1)} ms (tokenize + ONNX Runtime + softmax)` +
    (prediction.truncated ? "; truncated to max_length" : "");
  $("result").hidden = false;
  document.body.dataset.predictions = String(Number(document.body.dataset.predictions || 0) + 1);
}

try {
  const bundle = await load();
  const pair = bundle.inputKind === "sentence-pair";
  $("text-pair").hidden = !pair;
  for (const id of ["text", "text-pair", "classify"]) $(id).disabled = false;
  $("classify").addEventListener("click", async () => {
    $("error").textContent = "";
    try {
      const item = pair ? { text: $("text").value, text_pair: $("text-pair").value } : $("text").value;
      const started = performance.now();
      const [prediction] = await bundle.predict([item]);
      show(prediction, performance.now() - started);
    } catch (error) {
      $("error").textContent = String(error);
    }
  });
  document.body.dataset.ready = "true";
} catch (error) {
  $("meta").textContent = "";
  $("error").textContent = `cannot load the bundle at ${base}: ${error.message ?? error}`;
  document.body.dataset.ready = "error";
}
