// A small self-contained line chart on <canvas>: no library, nothing fetched.
// drawChart(canvas, [{name, color, points: [[x, y], ...]}], {xlabel, ylabel})
"use strict";

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) ticks.push(v);
  return ticks;
}

function fmt(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
  if (a === 0 || a >= 1) return String(Math.round(v * 100) / 100);
  return v.toPrecision(2);
}

function drawChart(canvas, series, opts) {
  opts = opts || {};
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 480, h = canvas.clientHeight || 240;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = {l: 56, r: 28, t: 24, b: 36};
  const pts = series.flatMap(s => s.points).filter(p => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  canvas.dataset.points = String(pts.length);
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#111";
  ctx.fillText(opts.title || "", pad.l, 14);
  if (pts.length === 0) {
    ctx.fillStyle = "#888";
    ctx.fillText("waiting for data ...", w / 2 - 50, h / 2);
    return;
  }
  let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]));
  let y0 = Math.min(...pts.map(p => p[1])), y1 = Math.max(...pts.map(p => p[1]));
  if (opts.yzero) { y0 = Math.min(0, y0); }
  if (x1 === x0) { x1 = x0 + 1; }
  if (y1 === y0) { y1 = y0 + 1; y0 = y0 - 1; }
  const X = x => pad.l + (x - x0) / (x1 - x0) * (w - pad.l - pad.r);
  const Y = y => h - pad.b - (y - y0) / (y1 - y0) * (h - pad.t - pad.b);
  ctx.strokeStyle = "#e5e7eb"; ctx.fillStyle = "#555"; ctx.lineWidth = 1;
  for (const t of niceTicks(y0, y1, 5)) {
    ctx.beginPath(); ctx.moveTo(pad.l, Y(t)); ctx.lineTo(w - pad.r, Y(t)); ctx.stroke();
    ctx.fillText(fmt(t), 4, Y(t) + 4);
  }
  for (const t of niceTicks(x0, x1, 6)) {
    ctx.beginPath(); ctx.moveTo(X(t), pad.t); ctx.lineTo(X(t), h - pad.b); ctx.stroke();
    ctx.fillText(fmt(t), X(t) - 10, h - pad.b + 14);
  }
  ctx.fillText(opts.xlabel || "", w / 2 - 30, h - 6);
  series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length];
    const p = s.points.filter(q => Number.isFinite(q[0]) && Number.isFinite(q[1]));
    ctx.strokeStyle = color; ctx.lineWidth = 1.8; ctx.beginPath();
    p.forEach((q, j) => (j ? ctx.lineTo(X(q[0]), Y(q[1])) : ctx.moveTo(X(q[0]), Y(q[1]))));
    ctx.stroke();
    if (series.length > 1 || opts.legend) {
      ctx.fillStyle = color;
      ctx.fillText(s.name, w - pad.r - 210, pad.t + 12 + 14 * i);
    }
  });
}
