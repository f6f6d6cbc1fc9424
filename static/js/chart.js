// The 10 Schwartz values as a circular chart in circumplex order (neighbours adjacent,
// opposites across): target handles and tolerance handles (the band's outer end), draggable
// with a pointer or moved with the arrow keys; the detected vector as a filled shape; a proposed change (from
// the translator) as dashed markers; a rewrite's vector beside the original's.

const NS = "http://www.w3.org/2000/svg";
const SIZE = 420;
const C = SIZE / 2;
const R = 150;

function s(tag, attrs = {}) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

const round2 = (x) => Math.round(x * 100) / 100;
const clamp01 = (x) => Math.min(1, Math.max(0, x));

export class ValueChart {
  /**
   * values: [{id, name, definition}] in circumplex order (as GET /v1/values returns them).
   * opts.editable: handles can be moved; opts.onChange(id, "target" | "tolerance", value)
   * reports a move;
   * opts.onAdd(id): an unconstrained value's label was chosen.
   */
  constructor(values, opts = {}) {
    this.values = values;
    this.opts = opts;
    this.targets = {};
    this.detected = null;
    this.proposed = null;
    this.after = null;
    this.svg = s("svg", {
      viewBox: `0 0 ${SIZE} ${SIZE}`,
      class: "value-chart",
      role: "group",
      "aria-label": "Value profile chart: Schwartz's circumplex",
    });
    this.el = document.createElement("figure");
    this.el.className = "chart";
    this.el.append(this.svg);
    this.legend = document.createElement("figcaption");
    this.el.append(this.legend);
    this.render();
  }

  angle(i) {
    return -Math.PI / 2 + (i * 2 * Math.PI) / this.values.length;
  }

  point(i, r) {
    const a = this.angle(i);
    return [C + r * R * Math.cos(a), C + r * R * Math.sin(a)];
  }

  setTargets(targets) {
    this.targets = targets || {};
    this.render();
  }

  setDetected(values) {
    this.detected = values || null;
    this.render();
  }

  /** A second vector drawn over the first (a rewrite's values beside the original's). */
  setAfter(values) {
    this.after = values || null;
    this.render();
  }

  setProposed(values) {
    this.proposed = values || null;
    this.render();
  }

  render() {
    const svg = this.svg;
    const active = document.activeElement;
    const focused = active?.dataset?.value
      ? `[data-value="${active.dataset.value}"]`
      : active?.dataset?.tolerance
        ? `[data-tolerance="${active.dataset.tolerance}"]`
        : null;
    svg.replaceChildren();
    for (const r of [0.25, 0.5, 0.75, 1]) {
      svg.append(s("circle", { cx: C, cy: C, r: r * R, class: "grid" }));
    }
    this.values.forEach((v, i) => {
      const [x, y] = this.point(i, 1);
      const constrained = v.id in this.targets;
      svg.append(s("line", { x1: C, y1: C, x2: x, y2: y, class: constrained ? "axis on" : "axis" }));
      const [lx, ly] = this.point(i, 1.17);
      const cos = Math.cos(this.angle(i));
      const label = s("text", {
        x: lx,
        y: ly,
        class: constrained ? "label on" : "label",
        "text-anchor": Math.abs(cos) < 0.2 ? "middle" : cos > 0 ? "start" : "end",
        "dominant-baseline": "middle",
      });
      label.textContent = v.name;
      const title = s("title");
      title.textContent = v.definition || v.name;
      label.append(title);
      if (this.opts.editable && !constrained && this.opts.onAdd) {
        label.classList.add("addable");
        label.addEventListener("click", () => this.opts.onAdd(v.id));
      }
      svg.append(label);
    });
    for (const [vec, cls] of [[this.detected, "detected"], [this.after, "after"]]) {
      if (!vec) continue;
      const pts = this.values.map((v, i) => this.point(i, clamp01(vec[v.id] ?? 0)).join(","));
      svg.append(s("polygon", { points: pts.join(" "), class: cls }));
      this.values.forEach((v, i) => {
        const [x, y] = this.point(i, clamp01(vec[v.id] ?? 0));
        svg.append(s("circle", { cx: x, cy: y, r: 3, class: `${cls}-dot` }));
      });
    }
    this.values.forEach((v, i) => {
      const t = this.targets[v.id];
      if (!t) return;
      const tol = t.tolerance ?? 0.15;
      const [x1, y1] = this.point(i, clamp01(t.target - tol));
      const [x2, y2] = this.point(i, clamp01(t.target + tol));
      svg.append(s("line", { x1, y1, x2, y2, class: "band" }));
    });
    if (this.proposed) {
      this.values.forEach((v, i) => {
        const p = this.proposed[v.id];
        if (p === undefined || p === null) return;
        const [x, y] = this.point(i, clamp01(p));
        const cur = this.targets[v.id];
        if (cur) {
          const [cx, cy] = this.point(i, clamp01(cur.target));
          svg.append(s("line", { x1: cx, y1: cy, x2: x, y2: y, class: "proposed-move" }));
        }
        svg.append(s("circle", { cx: x, cy: y, r: 7, class: "proposed" }));
      });
    }
    this.values.forEach((v, i) => {
      const t = this.targets[v.id];
      if (!t || !this.opts.editable) return;
      // The tolerance handle: the band's outer end, dragged to widen or narrow it.
      const tol = t.tolerance ?? 0.15;
      const [x, y] = this.point(i, clamp01(t.target + tol));
      const grip = s("rect", {
        x: x - 5,
        y: y - 5,
        width: 10,
        height: 10,
        class: "tol-handle",
        role: "slider",
        tabindex: 0,
        "aria-label": `${v.name} tolerance`,
        "aria-valuemin": 0,
        "aria-valuemax": 1,
        "aria-valuenow": tol,
        "data-tolerance": v.id,
      });
      const title = s("title");
      title.textContent = `${v.name}: tolerance ${tol.toFixed(2)}`;
      grip.append(title);
      this.bindHandle(grip, v.id, i, "tolerance");
      svg.append(grip);
    });
    this.values.forEach((v, i) => {
      const t = this.targets[v.id];
      if (!t) return;
      const [x, y] = this.point(i, clamp01(t.target));
      const handle = s("circle", {
        cx: x,
        cy: y,
        r: 8,
        class: this.opts.editable ? "handle editable" : "handle",
        role: "slider",
        "aria-label": `${v.name} target`,
        "aria-valuemin": 0,
        "aria-valuemax": 1,
        "aria-valuenow": t.target,
        "data-value": v.id,
      });
      const title = s("title");
      title.textContent = `${v.name}: target ${t.target.toFixed(2)} ± ${(t.tolerance ?? 0.15).toFixed(2)}`;
      handle.append(title);
      if (this.opts.editable) {
        handle.setAttribute("tabindex", "0");
        this.bindHandle(handle, v.id, i, "target");
      }
      svg.append(handle);
    });
    if (focused) svg.querySelector(focused)?.focus();
    this.legend.replaceChildren();
    const item = (cls, text) => {
      const span = document.createElement("span");
      span.className = `key ${cls}`;
      span.textContent = text;
      return span;
    };
    this.legend.append(item("k-target", "target ± tolerance"));
    if (this.detected) this.legend.append(item("k-detected", this.after ? "original" : "detected"));
    if (this.after) this.legend.append(item("k-after", "rewrite"));
    if (this.proposed) this.legend.append(item("k-proposed", "proposed"));
  }

  move(id, kind, value) {
    const t = this.targets[id];
    if (!t) return;
    if (kind === "tolerance") t.tolerance = round2(clamp01(value));
    else t.target = round2(clamp01(value));
    this.opts.onChange?.(id, kind, t[kind]);
    this.render();
  }

  bindHandle(handle, id, i, kind) {
    const a = this.angle(i);
    handle.addEventListener("pointerdown", (ev) => {
      ev.preventDefault();
      handle.setPointerCapture(ev.pointerId);
      handle.focus();
      const onMove = (e) => {
        const m = this.svg.getScreenCTM();
        const t = this.targets[id];
        if (!m || !t) return;
        const p = new DOMPoint(e.clientX, e.clientY).matrixTransform(m.inverse());
        const along = clamp01(((p.x - C) * Math.cos(a) + (p.y - C) * Math.sin(a)) / R);
        const value = kind === "tolerance" ? Math.abs(along - t.target) : along;
        t[kind] = round2(clamp01(value));
        this.opts.onChange?.(id, kind, t[kind]);
        handle.setAttribute("aria-valuenow", t[kind]);
        // Move the handle without re-rendering (keeps the pointer capture).
        if (kind === "target") {
          const [x, y] = this.point(i, t.target);
          handle.setAttribute("cx", x);
          handle.setAttribute("cy", y);
        } else {
          const [x, y] = this.point(i, clamp01(t.target + t.tolerance));
          handle.setAttribute("x", x - 5);
          handle.setAttribute("y", y - 5);
        }
      };
      const onUp = () => {
        handle.removeEventListener("pointermove", onMove);
        handle.removeEventListener("pointerup", onUp);
        handle.removeEventListener("pointercancel", onUp);
        this.render();
      };
      handle.addEventListener("pointermove", onMove);
      handle.addEventListener("pointerup", onUp);
      handle.addEventListener("pointercancel", onUp);
    });
    handle.addEventListener("keydown", (ev) => {
      const step = ev.shiftKey ? 0.1 : 0.01;
      const t = this.targets[id];
      if (!t) return;
      const cur = t[kind] ?? 0.15;
      if (ev.key === "ArrowUp" || ev.key === "ArrowRight") this.move(id, kind, cur + step);
      else if (ev.key === "ArrowDown" || ev.key === "ArrowLeft") this.move(id, kind, cur - step);
      else if (ev.key === "Home") this.move(id, kind, 0);
      else if (ev.key === "End") this.move(id, kind, 1);
      else return;
      ev.preventDefault();
    });
  }
}
