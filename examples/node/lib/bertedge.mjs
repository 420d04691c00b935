// bertedge bundles in JavaScript: the pre- and postprocessing of `bertedge predict`, ported.
//
// Runs anywhere (Node, browsers, Electron): it does no I/O and imports nothing. The caller gives it
// the bundle's manifest (bertedge.json), a tokenizer built from the bundle's tokenizer.json
// (`new Tokenizer(tokenizerJson, tokenizerConfig)` from @huggingface/tokenizers), an ONNX Runtime
// InferenceSession and the ONNX Runtime module it came from (onnxruntime-node or onnxruntime-web):
//
//   const bundle = new BertedgeBundle({ manifest, tokenizer, tokenizerJson, session, ort });
//   await bundle.predict(["a gripping film"])    // [{label, score, scores, truncated}]
//
// What it reproduces, from bertedge/tasks and bertedge/runtime.py:
// - text classification: [CLS] a [SEP] (b [SEP]) truncated longest-first to max_length;
// - NER: raw text split into words like bertedge (runs of letters/digits/_, or one other non-space
//   character), each word tokenized on its own, the tag read at its first word piece;
// - QA: the question left-stripped (shortened if it leaves no room), the context in windows of
//   max_length tokens overlapping by doc_stride, the best span (s <= e, at most max_answer_length
//   tokens, among the n_best start and end logits), mapped back to characters;
// - batching: features sorted by length and padded per batch like bertedge, or one sequence per call
//   (per-sequence, the default for int8 bundles whose graphs compute scales over the whole batch);
// - early-exit bundles (manifest early_exit, docs/early_exit.md): one session per segment graph, run in
//   order until the rule (entropy, max-prob or patience) fires, rows decided leaving the batch and the
//   columns that are padding for every remaining row cut, as bertedge/early_exit.py's run_segments does.
// Character offsets (entity and answer start/end) count Unicode code points, as Python does.

const PY_SPACE = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
// Python's re `\w+|[^\w\s]` over str (bertedge.runtime.WORD_PATTERN): \w is letters, numbers and _.
const WORD_PATTERN = new RegExp(`[\\p{L}\\p{N}_]+|[^\\p{L}\\p{N}_${PY_SPACE}]`, "gu");
const LEADING_SPACE = new RegExp(`^[${PY_SPACE}]+`, "u");
// Ops that compute activation scales at run time over the whole batch (bertedge.runtime.RUNTIME_SCALE_OPS).
const RUNTIME_SCALE_OPS = ["DynamicQuantizeLinear", "QAttention", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"];

/** Whether a bundle's outputs for one input do not depend on the rest of its batch. */
export function batchInvariant(manifest) {
  const q = manifest.quantization || {};
  if ("batch_invariant" in q) return Boolean(q.batch_invariant);
  const ops = q.op_counts || {};
  return !RUNTIME_SCALE_OPS.some((op) => ops[op]);
}

/** Lone UTF-16 surrogates (no UTF-8 tokenizer takes them) -> U+FFFD, like bertedge.runtime.tokenizable. */
export function tokenizable(text) {
  return text.replace(/\p{Cs}/gu, "\ufffd");
}

const codePoints = (text) => Array.from(text);

/** Words of `text` and their [start, end) spans in code points (bertedge.runtime.split_words). */
export function splitWords(text) {
  const words = [];
  const spans = [];
  let unit = 0;
  let point = 0;
  for (const match of text.matchAll(WORD_PATTERN)) {
    point += codePoints(text.slice(unit, match.index)).length;
    const length = codePoints(match[0]).length;
    words.push(match[0]);
    spans.push([point, point + length]);
    point += length;
    unit = match.index + match[0].length;
  }
  return { words, spans };
}

export function softmax(values) {
  const max = Math.max(...values);
  const exps = values.map((v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}

const argmax = (values) => values.reduce((best, v, i) => (v > values[best] ? i : best), 0);

// seqeval's default chunking (bertedge.tasks.token.get_entities).
function endOfChunk(prevTag, tag, prevType, type) {
  if (prevTag === "E" || prevTag === "S") return true;
  if ((prevTag === "B" || prevTag === "I") && (tag === "B" || tag === "S" || tag === "O")) return true;
  return prevTag !== "O" && prevTag !== "." && prevType !== type;
}

function startOfChunk(prevTag, tag, prevType, type) {
  if (tag === "B" || tag === "S") return true;
  if ((prevTag === "E" || prevTag === "S" || prevTag === "O") && (tag === "E" || tag === "I")) return true;
  return tag !== "O" && tag !== "." && prevType !== type;
}

/** [type, first, last] word spans of the entities in an IOB tag sequence. */
export function getEntities(tags) {
  const chunks = [];
  let prevTag = "O";
  let prevType = "";
  let begin = 0;
  [...tags, "O"].forEach((chunk, i) => {
    const tag = chunk[0];
    const rest = chunk.slice(1);
    const dash = rest.indexOf("-");
    const type = (dash >= 0 ? rest.slice(dash + 1) : rest) || "_"; // Python: rest.split("-", 1)[-1] or "_"
    if (endOfChunk(prevTag, tag, prevType, type)) chunks.push([prevType, begin, i - 1]);
    if (startOfChunk(prevTag, tag, prevType, type)) begin = i;
    prevTag = tag;
    prevType = type;
  });
  return chunks;
}

/** The special-token template of tokenizer.json's post_processor. */
function template(tokenizerJson) {
  const post = tokenizerJson.post_processor;
  if (!post) return { single: [["A", 0]], pair: [["A", 0], ["B", 1]] };
  if (post.type === "TemplateProcessing") {
    const convert = (items) => items.map((item) => item.Sequence
      ? [item.Sequence.id, item.Sequence.type_id]
      : [post.special_tokens[item.SpecialToken.id].ids, item.SpecialToken.type_id]);
    return { single: convert(post.single), pair: convert(post.pair) };
  }
  if (post.type === "BertProcessing") {
    const cls = [post.cls[1]];
    const sep = [post.sep[1]];
    return { single: [[cls, 0], ["A", 0], [sep, 0]], pair: [[cls, 0], ["A", 0], [sep, 0], ["B", 1], [sep, 1]] };
  }
  if (post.type === "RobertaProcessing") {
    const cls = [post.cls[1]];
    const sep = [post.sep[1]];
    return { single: [[cls, 0], ["A", 0], [sep, 0]], pair: [[cls, 0], ["A", 0], [sep, 0], [sep, 0], ["B", 0], [sep, 0]] };
  }
  throw new Error(`unsupported tokenizer post_processor ${post.type}`);
}

/** Apply a template: {ids, typeIds, sequenceIds, offsets} (offsets only where given). */
function withSpecials(parts, a, b = null, offsetsA = null, offsetsB = null) {
  const out = { ids: [], typeIds: [], sequenceIds: [], offsets: [] };
  for (const [what, typeId] of parts) {
    if (what === "A" || what === "B") {
      const ids = what === "A" ? a : b;
      const offsets = what === "A" ? offsetsA : offsetsB;
      ids.forEach((id, i) => {
        out.ids.push(id);
        out.typeIds.push(typeId);
        out.sequenceIds.push(what === "A" ? 0 : 1);
        out.offsets.push(offsets ? offsets[i] : null);
      });
    } else {
      for (const id of what) {
        out.ids.push(id);
        out.typeIds.push(typeId);
        out.sequenceIds.push(null);
        out.offsets.push(null);
      }
    }
  }
  return out;
}

const specialCount = (parts) => parts.reduce((n, [what]) => n + (what === "A" || what === "B" ? 0 : what.length), 0);

/** HF tokenizers' longest_first lengths for a pair within `budget` tokens (tokenizers/src/utils/truncation.rs). */
function longestFirst(n1, n2, budget) {
  let swap = false;
  if (n1 > n2) {
    [n1, n2] = [n2, n1];
    swap = true;
  }
  n2 = n1 > budget ? n1 : Math.max(n1, budget - n1);
  if (n1 + n2 > budget) {
    n1 = Math.floor(budget / 2);
    n2 = n1 + (budget % 2);
  }
  return swap ? [n2, n1] : [n1, n2];
}

// ------------------------------------------------------------------ early exit (bertedge/early_exit.py)

export const EXIT_RULES = ["entropy", "max-prob", "patience"];

/** `threshold` if it is in range for `rule` (bertedge.early_exit.check_threshold); throws otherwise. */
export function checkThreshold(rule, threshold) {
  if (!EXIT_RULES.includes(rule)) throw new Error(`unknown exit rule '${rule}': choose one of ${EXIT_RULES.join(", ")}`);
  const value = typeof threshold === "number" ? threshold : NaN;
  if (rule === "patience") {
    if (!Number.isFinite(value) || value < 1 || !Number.isInteger(value)) {
      throw new Error(`threshold ${threshold} is out of range for the patience rule (a whole number of layers, 1 or more)`);
    }
    return value;
  }
  if (!Number.isFinite(value) || value < 0 || value > 1) {
    throw new Error(`threshold ${threshold} is out of range for the ${rule} rule (0 to 1)`);
  }
  return value;
}

/** H(p) / ln(num_labels) of a probability row, in float64 (bertedge.early_exit.normalised_entropy). */
export function normalisedEntropy(probs) {
  if (probs.length <= 1) return 0;
  let sum = 0;
  for (const p of probs) sum += p > 0 ? p * Math.log(p) : 0;
  return -sum / Math.log(probs.length);
}

/** Does an entropy / max-prob exit fire on one row of exit logits? (softmax in float64, as Python does) */
export function exitFires(rule, threshold, logits) {
  const probs = softmax(Array.from(logits));
  if (rule === "entropy") return normalisedEntropy(probs) < threshold;
  if (rule === "max-prob") return Math.max(...probs) > threshold;
  throw new Error(`exitFires: ${rule} is not a per-layer rule`);
}

/** The rows of a [rows, width, ...inner] tensor's data, `rows` picked and the sequence cut to `keepWidth`. */
function pickRows(data, rows, width, inner, keepWidth) {
  const out = new data.constructor(rows.length * keepWidth * inner);
  rows.forEach((r, i) => {
    out.set(data.subarray(r * width * inner, (r * width + keepWidth) * inner), i * keepWidth * inner);
  });
  return out;
}

export class BertedgeBundle {
  /**
   * @param {object} o
   * @param {object} o.manifest        bertedge.json
   * @param {object} o.tokenizer       a @huggingface/tokenizers Tokenizer over the bundle's tokenizer.json
   * @param {object} o.tokenizerJson   tokenizer.json (special-token template, WordPiece settings)
   * @param {object} o.session         an ONNX Runtime InferenceSession of model.onnx (early exit: of segment 0)
   * @param {object[]} [o.segments]    early-exit bundles: one InferenceSession per early_exit.segments file, in order
   * @param {object} o.ort             the ONNX Runtime module (for ort.Tensor)
   * @param {boolean} [o.perSequence]  one sequence per model call (default: for batch-dependent int8)
   * @param {boolean} [o.fullDepth]    early exit: run every segment (the full-depth model's logits)
   * @param {string} [o.rule]          early exit: entropy, max-prob or patience instead of the manifest's
   * @param {number} [o.threshold]     early exit: the rule's threshold instead of the manifest's
   */
  constructor({ manifest, tokenizer, tokenizerJson, session, segments, ort, perSequence, fullDepth = false, rule, threshold }) {
    const exits = manifest.early_exit || {};
    this.earlyExit = exits.segments?.length ? exits : null;
    if (this.earlyExit) {
      const files = exits.segments.map((s) => s.file);
      if ((exits.protocol_version ?? 1) !== 1) {
        throw new Error(`this early-exit bundle uses exit protocol version ${exits.protocol_version}; ` +
          "this code implements version 1 (docs/early_exit.md)");
      }
      if (!Array.isArray(segments) || segments.length !== files.length) {
        throw new Error(`this early-exit bundle has ${files.length} segment graphs (${files.join(", ")}): pass ` +
          "segments, one InferenceSession per file in that order (lib/node.mjs loadBundle does)");
      }
      session = segments[0];
      this.segments = segments;
      this.rule = rule ?? exits.rule;
      if (threshold == null && this.rule !== exits.rule) {
        throw new Error(`the bundle's threshold is for the ${exits.rule} rule, not ${this.rule}: pass a threshold with the rule`);
      }
      this.threshold = checkThreshold(this.rule, threshold ?? exits.threshold);
      this.fullDepth = Boolean(fullDepth);
      this.segmentCalls = files.map(() => 0);
    } else if (rule != null || threshold != null) {
      throw new Error("rule and threshold are for early-exit bundles; this bundle has no early_exit.segments");
    }
    if (!session) throw new Error("pass session, an ONNX Runtime InferenceSession of the bundle's model.onnx");
    this.manifest = manifest;
    this.tokenizer = tokenizer;
    this.tokenizerJson = tokenizerJson;
    this.session = session;
    this.ort = ort;
    this.task = manifest.task;
    this.labels = manifest.labels || null;
    this.settings = { max_length: 128, doc_stride: 128, max_answer_length: 30, n_best: 20, ...(manifest.settings || {}) };
    this.inputKind = (manifest.interface || {}).input_kind || {
      "text-classification": "single-sentence", "token-classification": "words",
      "question-answering": "question-context",
    }[this.task];
    this.padId = (manifest.tokenizer || {}).pad_token_id ?? (tokenizerJson.padding || {}).pad_id ?? 0;
    this.template = template(tokenizerJson);
    this.batchInvariant = batchInvariant(manifest);
    this.perSequence = perSequence ?? !this.batchInvariant;
    this.inputNames = session.inputNames;
    this.outputNames = this.earlyExit ? ["logits", "exit_layer"] : session.outputNames;
  }

  /** Token ids of `text` without special tokens. */
  pieces(text) {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  /**
   * Token ids of `text` with their [start, end) code-point offsets into `text`, as HF tokenizers' offsets
   * (WordPiece tokenizers: the BERT family). Each character is normalized on its own, so every normalized
   * character knows the original one it came from.
   */
  piecesWithOffsets(text) {
    const model = this.tokenizerJson.model || {};
    if (model.type !== "WordPiece") {
      throw new Error(`character offsets are implemented for WordPiece tokenizers only (this one is ${model.type})`);
    }
    const normalizer = this.tokenizer.normalizer;
    const chars = [];
    const origin = [];
    codePoints(text).forEach((c, i) => {
      for (const n of codePoints(normalizer ? normalizer.normalize(c) : c)) {
        chars.push(n);
        origin.push(i);
      }
    });
    const normalized = chars.join("");
    const words = this.tokenizer.pre_tokenizer ? this.tokenizer.pre_tokenizer.pre_tokenize_text(normalized) : [normalized];
    const prefix = model.continuing_subword_prefix ?? "##";
    const ids = [];
    const offsets = [];
    let cursor = 0; // in UTF-16 units of `normalized`
    for (const word of words) {
      const at = normalized.indexOf(word, cursor);
      const start = codePoints(normalized.slice(0, at)).length;
      cursor = at + word.length;
      const length = codePoints(word).length;
      let pos = start;
      for (const [k, piece] of this.tokenizer.model.encode([word]).entries()) {
        ids.push(this.tokenizer.model.tokens_to_ids.get(piece));
        const n = piece === this.tokenizer.model.unk_token ? length
          : codePoints(k > 0 && piece.startsWith(prefix) ? piece.slice(prefix.length) : piece).length;
        offsets.push([origin[pos], origin[pos + n - 1] + 1]);
        pos += n;
      }
    }
    return { ids, offsets };
  }

  // ------------------------------------------------------------------ inputs

  /** One raw input -> the task's example (bertedge.runtime.Bundle.normalize). */
  normalize(item) {
    const kind = this.inputKind;
    if (kind === "single-sentence" || kind === "sentence-pair") {
      if (typeof item === "string") item = { text: item };
      if (typeof item?.text !== "string") throw new Error("expected a text (a string, or an object with a 'text' string)");
      const pair = item.text_pair;
      if (kind === "sentence-pair" && typeof pair !== "string") throw new Error("this model classifies sentence pairs but got one text");
      if (kind === "single-sentence" && pair != null) throw new Error("this model classifies single texts but got a text_pair");
      return { text: tokenizable(item.text), textPair: kind === "sentence-pair" ? tokenizable(pair) : null };
    }
    if (kind === "words") {
      if (typeof item === "string") item = { text: item };
      if (Array.isArray(item?.tokens)) return { tokens: item.tokens.map((t) => tokenizable(String(t))), text: null, spans: null };
      if (typeof item?.text !== "string") throw new Error("expected a text (a string, {text} or {tokens: [...]})");
      const { words, spans } = splitWords(tokenizable(item.text));
      return { tokens: words, text: item.text, spans };
    }
    if (typeof item?.question !== "string" || typeof item?.context !== "string") {
      throw new Error("question answering needs {question, context}");
    }
    const [question, cut] = this.fitQuestion(tokenizable(item.question));
    return { question, context: tokenizable(item.context), questionTruncated: cut, rawContext: item.context };
  }

  /** Shorten a question that leaves no room for a context window (bertedge's _fit_question). */
  fitQuestion(question) {
    const s = this.settings;
    const budget = s.max_length - specialCount(this.template.pair) - s.doc_stride - 1;
    const stripped = question.replace(LEADING_SPACE, "");
    const { offsets } = this.piecesWithOffsets(stripped);
    if (offsets.length <= budget) return [question, false];
    const end = offsets[Math.max(budget, 1) - 1][1];
    const lead = codePoints(question).length - codePoints(stripped).length;
    return [codePoints(question).slice(0, lead + end).join(""), true];
  }

  // ------------------------------------------------------------------ features

  features(examples) {
    const s = this.settings;
    const features = [];
    examples.forEach((ex, index) => {
      if (this.task === "text-classification") {
        const pair = ex.textPair != null;
        const parts = pair ? this.template.pair : this.template.single;
        const budget = s.max_length - specialCount(parts);
        let a = this.pieces(ex.text);
        let b = pair ? this.pieces(ex.textPair) : null;
        let truncated = false;
        if (!pair && a.length > budget) {
          a = a.slice(0, budget);
          truncated = true;
        } else if (pair && a.length + b.length > budget) {
          const [n1, n2] = longestFirst(a.length, b.length, budget);
          truncated = true;
          a = a.slice(0, n1);
          b = b.slice(0, n2);
        }
        features.push({ ...withSpecials(parts, a, b), exampleIndex: index, truncated });
      } else if (this.task === "token-classification") {
        const parts = this.template.single;
        const budget = s.max_length - specialCount(parts);
        const ids = [];
        const firstPiece = [];
        for (const word of ex.tokens) {
          const p = this.pieces(word);
          firstPiece.push(p.length && ids.length < budget ? ids.length : null);
          ids.push(...p);
        }
        const enc = withSpecials(parts, ids.slice(0, budget));
        const shift = enc.sequenceIds.indexOf(0);
        features.push({ ...enc, exampleIndex: index, firstPiece: firstPiece.map((p) => (p === null ? null : p + shift)) });
      } else {
        const parts = this.template.pair;
        const q = this.piecesWithOffsets(ex.question.replace(LEADING_SPACE, ""));
        const c = this.piecesWithOffsets(ex.context);
        const budget = s.max_length - specialCount(parts) - q.ids.length;
        const windows = [];
        if (c.ids.length <= budget) {
          windows.push([0, c.ids.length]);
        } else {
          const step = budget - s.doc_stride;
          if (step <= 0) throw new Error("the question leaves no room for a context window");
          for (let start = 0; start < c.ids.length; start += step) {
            const stop = Math.min(start + budget, c.ids.length);
            windows.push([start, stop]);
            if (stop === c.ids.length) break;
          }
        }
        for (const [start, stop] of windows) {
          const enc = withSpecials(parts, q.ids, c.ids.slice(start, stop), null, c.offsets.slice(start, stop));
          enc.offsets = enc.offsets.map((o, i) => (enc.sequenceIds[i] === 1 ? o : null));
          features.push({ ...enc, exampleIndex: index });
        }
      }
    });
    return features;
  }

  // ------------------------------------------------------------------ model

  /** Pad a batch of features to its longest member (bertedge.tokenization.TextEncoder.collate). */
  collate(batch) {
    const length = Math.max(...batch.map((f) => f.ids.length));
    const n = batch.length;
    const ids = new BigInt64Array(n * length).fill(BigInt(this.padId));
    const mask = new BigInt64Array(n * length);
    const types = new BigInt64Array(n * length);
    batch.forEach((f, row) => {
      f.ids.forEach((id, j) => {
        ids[row * length + j] = BigInt(id);
        mask[row * length + j] = 1n;
        types[row * length + j] = BigInt(f.typeIds[j]);
      });
    });
    const all = { input_ids: ids, attention_mask: mask, token_type_ids: types };
    const feeds = {};
    for (const name of this.inputNames) feeds[name] = new this.ort.Tensor("int64", all[name], [n, length]);
    return feeds;
  }

  /** Model outputs per feature, batched like bertedge's run_forward (length-sorted, padded per batch). */
  async forward(features, batchSize) {
    const size = this.perSequence ? 1 : batchSize;
    const order = features.map((_, i) => i).sort((i, j) => features[i].ids.length - features[j].ids.length);
    const results = new Array(features.length);
    const perToken = this.task !== "text-classification";
    for (let start = 0; start < order.length; start += size) {
      const idx = order.slice(start, start + size);
      const feeds = this.collate(idx.map((i) => features[i]));
      const out = this.earlyExit ? await this.runSegments(feeds) : await this.session.run(feeds);
      idx.forEach((i, row) => {
        const n = features[i].ids.length;
        const result = {};
        for (const name of this.outputNames) {
          const tensor = out[name];
          if (tensor.dims.length === 1) { // one number per row (exit_layer)
            result[name] = Number(tensor.data[row]);
            continue;
          }
          const [, length, ...rest] = tensor.dims;
          const width = rest.reduce((a, b) => a * b, 1);
          if (perToken) {
            const data = tensor.data.subarray(row * length * width, row * length * width + n * width);
            result[name] = rest.length === 0 ? Array.from(data)
              : Array.from({ length: n }, (_, t) => Array.from(data.subarray(t * width, (t + 1) * width)));
          } else {
            const rowWidth = tensor.dims.slice(1).reduce((a, b) => a * b, 1);
            result[name] = Array.from(tensor.data.subarray(row * rowWidth, (row + 1) * rowWidth));
          }
        }
        results[i] = result;
      });
    }
    return results;
  }

  /**
   * One batch through an early-exit bundle's segments (bertedge.early_exit.run_segments): after segment k
   * the rows whose exit fires are decided (exit layer k + 1); the others go on to segment k + 1 with its
   * hidden state, cut to their longest remaining sequence. The last segment answers for every row left.
   * Returns {logits: [rows, labels] float32, exit_layer: [rows]} in the shape of a session's outputs.
   */
  async runSegments(feeds) {
    const layers = this.segments.length;
    if (!feeds.attention_mask) throw new Error("segment 0 of an early-exit bundle must take attention_mask");
    let mask = feeds.attention_mask.data;
    let [n, width] = feeds.attention_mask.dims;
    const exitLayer = new Int32Array(n).fill(layers);
    const decided = new Array(n);
    let active = Array.from({ length: n }, (_, i) => i);
    let previous = new Array(n).fill(-1); // patience: the argmax of the previous layer and how many agreed
    let count = new Array(n).fill(0);
    let labels = 0;
    let inputs = feeds;
    for (let k = 0; k < layers; k++) {
      const session = this.segments[k];
      this.segmentCalls[k] += 1;
      const out = await session.run(Object.fromEntries(session.inputNames.map((name) => {
        if (!(name in inputs)) throw new Error(`segment ${k} (${this.earlyExit.segments[k].file}) wants input ${name}, which the exit protocol does not give it`);
        return [name, inputs[name]];
      })));
      const last = k === layers - 1;
      const tensor = out[last ? "logits" : "exit_logits"];
      if (!tensor) throw new Error(`segment ${k} (${this.earlyExit.segments[k].file}) has no ${last ? "logits" : "exit_logits"} output`);
      labels = tensor.dims[1];
      const row = (r) => tensor.data.slice(r * labels, (r + 1) * labels);
      if (last) {
        active.forEach((i, r) => { decided[i] = row(r); });
        break;
      }
      const fire = active.map((_, r) => {
        if (this.fullDepth) return false;
        if (this.rule !== "patience") return exitFires(this.rule, this.threshold, row(r));
        const predicted = argmax(row(r));
        count[r] = predicted === previous[r] ? count[r] + 1 : 0;
        previous[r] = predicted;
        return count[r] >= this.threshold;
      });
      active.forEach((i, r) => {
        if (fire[r]) {
          decided[i] = row(r);
          exitLayer[i] = k + 1;
        }
      });
      const keep = fire.flatMap((f, r) => (f ? [] : [r]));
      if (!keep.length) break;
      const hidden = out.next_hidden_state;
      if (!hidden) throw new Error(`segment ${k} (${this.earlyExit.segments[k].file}) has no next_hidden_state output`);
      const size = hidden.dims[2];
      let used = -1; // the last column that is not padding for some remaining row
      for (const r of keep) {
        for (let j = width - 1; j > used; j--) {
          if (mask[r * width + j] !== 0n) { used = j; break; }
        }
      }
      const keepWidth = used >= 0 ? used + 1 : width;
      let state = hidden;
      if (keep.length < active.length || keepWidth < width) {
        state = new this.ort.Tensor("float32", pickRows(hidden.data, keep, width, size, keepWidth), [keep.length, keepWidth, size]);
        mask = pickRows(mask, keep, width, 1, keepWidth);
        active = keep.map((r) => active[r]);
        previous = keep.map((r) => previous[r]);
        count = keep.map((r) => count[r]);
        width = keepWidth;
      }
      inputs = { hidden_state: state, attention_mask: new this.ort.Tensor("int64", mask, [active.length, width]) };
    }
    const logits = new Float32Array(n * labels);
    decided.forEach((values, i) => logits.set(values, i * labels));
    return { logits: { data: logits, dims: [n, labels] }, exit_layer: { data: exitLayer, dims: [n] } };
  }

  // ------------------------------------------------------------------ predictions

  /**
   * Predictions for raw inputs, in order, like `bertedge predict` (one object per input). `logits`
   * adds "outputs": the raw model outputs per model window, as `bertedge predict --logits` does.
   */
  async predict(items, { batchSize = 32, logits = false } = {}) {
    const results = [];
    for (let start = 0; start < items.length; start += batchSize) {
      const examples = items.slice(start, start + batchSize).map((item) => this.normalize(item));
      const features = this.features(examples);
      const outputs = await this.forward(features, batchSize);
      const chunk = this.postprocess(examples, features, outputs);
      if (logits) {
        chunk.forEach((r) => { r.outputs = []; });
        features.forEach((f, i) => chunk[f.exampleIndex].outputs.push(outputs[i]));
      }
      results.push(...chunk);
    }
    return results;
  }

  postprocess(examples, features, outputs) {
    if (this.task === "text-classification") {
      return features.map((f, i) => {
        const probs = softmax(outputs[i].logits);
        const best = argmax(probs);
        const names = this.labels || probs.map((_, k) => String(k));
        const result = { label: names[best], score: probs[best],
          scores: Object.fromEntries(names.map((name, k) => [name, probs[k]])), truncated: f.truncated };
        if (outputs[i].exit_layer !== undefined) result.exit_layer = outputs[i].exit_layer;
        return result;
      });
    }
    if (this.task === "token-classification") {
      return features.map((f, i) => {
        const ex = examples[f.exampleIndex];
        const rows = outputs[i].logits;
        const tags = f.firstPiece.map((pos) => (pos === null ? "O" : this.labels[argmax(rows[pos])]));
        const wordScores = f.firstPiece.map((pos) => (pos === null ? null : Math.max(...softmax(rows[pos]))));
        const entities = getEntities(tags).map(([entity, first, last]) => {
          const scores = wordScores.slice(first, last + 1).filter((s) => s !== null);
          const e = { entity, score: scores.length ? scores.reduce((a, b) => a + b, 0) / scores.length : null,
            first_word: first, last_word: last };
          if (ex.spans) {
            const startChar = ex.spans[first][0];
            const endChar = ex.spans[last][1];
            Object.assign(e, { text: codePoints(ex.text).slice(startChar, endChar).join(""), start: startChar, end: endChar });
          } else {
            e.text = ex.tokens.slice(first, last + 1).join(" ");
          }
          return e;
        });
        const truncatedWords = f.firstPiece.filter((p) => p === null).length;
        return { entities, truncated: truncatedWords > 0, truncated_words: truncatedWords, words: ex.tokens.length };
      });
    }
    const { n_best: nBest, max_answer_length: maxAnswer } = this.settings;
    const topK = (values) => values.map((v, i) => i).sort((i, j) => values[j] - values[i] || j - i).slice(0, nBest);
    return examples.map((ex, index) => {
      let best = null;
      let windows = 0;
      features.forEach((f, i) => {
        if (f.exampleIndex !== index) return;
        windows += 1;
        const { start_logits: startLogits, end_logits: endLogits } = outputs[i];
        for (const s of topK(startLogits)) {
          if (f.offsets[s] == null) continue;
          for (const e of topK(endLogits)) {
            if (f.offsets[e] == null || e < s || e - s + 1 > maxAnswer) continue;
            const score = Math.fround(startLogits[s] + endLogits[e]);
            if (best === null || score > best[0]) best = [score, f.offsets[s][0], f.offsets[e][1]];
          }
        }
      });
      const [score, start, end] = best || [null, 0, 0];
      return { answer: codePoints(ex.rawContext).slice(start, end).join(""), start, end,
        score: score === null || !Number.isFinite(score) ? null : score, windows, question_truncated: ex.questionTruncated };
    });
  }
}
