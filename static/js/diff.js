// A word-level diff (longest common subsequence) for showing a rewrite beside its original:
// words only in the original are marked removed, words only in the rewrite added.

import { h } from "./dom.js";

/** The original and the rewrite as two text blocks, removed words struck, added words marked. */
export function diffView(original, rewrite, ids = {}) {
  const ops = wordDiff(original, rewrite);
  const left = h("div", { class: "text", id: ids.left || null });
  const right = h("div", { class: "text", id: ids.right || null });
  for (const op of ops) {
    if (op.op === "same") {
      left.append(op.text);
      right.append(op.text);
    } else if (op.op === "del") left.append(h("del", {}, op.text));
    else right.append(h("ins", {}, op.text));
  }
  return [left, right];
}

export function wordDiff(a, b) {
  const x = a.split(/(\s+)/).filter((t) => t.length);
  const y = b.split(/(\s+)/).filter((t) => t.length);
  const n = x.length;
  const m = y.length;
  // Past this size the table costs more than the picture is worth: mark all as changed.
  if (n * m > 4_000_000) {
    return [{ op: "del", text: a }, { op: "add", text: b }];
  }
  const dp = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      dp[i][j] = x[i] === y[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
    }
  }
  const out = [];
  const push = (op, text) => {
    const last = out[out.length - 1];
    if (last && last.op === op) last.text += text;
    else out.push({ op, text });
  };
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) {
      push("same", x[i]);
      i++;
      j++;
    } else if (dp[i + 1][j] >= dp[i][j + 1]) {
      push("del", x[i++]);
    } else {
      push("add", y[j++]);
    }
  }
  while (i < n) push("del", x[i++]);
  while (j < m) push("add", y[j++]);
  return out;
}
