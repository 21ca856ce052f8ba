// A small time-series chart on a <canvas>: a line (prices) or dots (latencies).
// No dependencies. The x axis is the last `window` seconds, scrolling with the clock.

const GRID = "#263241";
const LABEL = "#8595a6";
const FONT = '11px system-ui, "Liberation Sans", sans-serif';
const REDRAW_MS = 100;

export class TimeChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} options
   *   window: seconds shown (default 60); mode: "line" | "dots";
   *   log: a logarithmic y axis between `min` and `max` (else autoscaled);
   *   format(v, decimals): a y label (decimals: what the grid step needs); color: a fixed color, or colorOf(points) picks one.
   */
  constructor(canvas, options = {}) {
    this.canvas = canvas;
    this.options = { window: 60, mode: "line", log: false, format: String, color: "#4ea1ff", ...options };
    this.points = []; // [timeMs, value], oldest first
    // Redrawn ten times a second (the axis scrolls a pixel or so in that time):
    // every frame would take the main thread from the messages being measured.
    let drawn = 0;
    const loop = (time) => {
      if (time - drawn >= REDRAW_MS) {
        drawn = time;
        this.draw();
      }
      requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  }

  push(timeMs, value) {
    this.points.push([timeMs, value]);
    const horizon = timeMs - this.options.window * 1000 * 1.5;
    let drop = 0;
    while (drop < this.points.length && this.points[drop][0] < horizon) drop++;
    if (drop > 0) this.points.splice(0, drop);
  }

  clear() {
    this.points = [];
  }

  draw() {
    const { canvas, options } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const left = 52, right = 8, top = 8, bottom = 20;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const now = Date.now();
    const start = now - options.window * 1000;
    const visible = this.points.filter(([t]) => t >= start);

    // y scale
    let lo, hi, y;
    if (options.log) {
      lo = Math.log10(options.min);
      hi = Math.log10(options.max);
      y = (v) => top + plotH * (1 - (Math.log10(Math.min(Math.max(v, options.min), options.max)) - lo) / (hi - lo));
    } else {
      if (visible.length) {
        lo = Math.min(...visible.map((p) => p[1]));
        hi = Math.max(...visible.map((p) => p[1]));
      } else {
        lo = 0;
        hi = 1;
      }
      const pad = Math.max((hi - lo) * 0.12, Math.abs(hi) * 0.0005, 0.01);
      lo -= pad;
      hi += pad;
      y = (v) => top + plotH * (1 - (v - lo) / (hi - lo));
    }
    const x = (t) => left + plotW * ((t - start) / (options.window * 1000));

    // grid and labels
    ctx.font = FONT;
    ctx.fillStyle = LABEL;
    ctx.strokeStyle = GRID;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const ticks = [];
    let decimals = 0;
    if (options.log) {
      for (let e = Math.ceil(lo); e <= Math.floor(hi); e++) ticks.push(10 ** e);
    } else {
      const step = niceStep((hi - lo) / 4);
      decimals = (String(Number(step.toPrecision(6))).split(".")[1] || "").length;
      for (let i = Math.ceil(lo / step); i * step <= hi; i++) ticks.push(i * step);
    }
    for (const v of ticks) {
      const py = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, py);
      ctx.lineTo(width - right, py);
      ctx.stroke();
      ctx.fillText(options.format(v, decimals), left - 6, py);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "alphabetic";
    const xStep = options.window >= 60 ? 15 : 10;
    for (let s = 0; s <= options.window; s += xStep) {
      const px = Math.round(x(now - s * 1000)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(px, top);
      ctx.lineTo(px, top + plotH);
      ctx.stroke();
      ctx.fillText(s === 0 ? "now" : `-${s}s`, Math.min(Math.max(px, left + 12), width - right - 12), height - 5);
    }

    if (!visible.length) {
      ctx.fillStyle = LABEL;
      ctx.textAlign = "center";
      ctx.fillText(options.empty || "waiting for data…", left + plotW / 2, top + plotH / 2);
      return;
    }
    const color = options.colorOf ? options.colorOf(visible) : options.color;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, plotW, plotH);
    ctx.clip();
    if (options.mode === "dots") {
      ctx.fillStyle = color;
      for (const [t, v] of visible) {
        ctx.beginPath();
        ctx.arc(x(t), y(v), 2.2, 0, Math.PI * 2);
        ctx.fill();
      }
    } else {
      // from the last point before the window, so the line starts at the left edge
      const before = this.points.filter(([t]) => t < start).pop();
      const line = before ? [before, ...visible] : visible;
      ctx.beginPath();
      line.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
      ctx.lineTo(x(now), y(line[line.length - 1][1]));
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.8;
      ctx.stroke();
      ctx.lineTo(x(now), top + plotH);
      ctx.lineTo(x(line[0][0]), top + plotH);
      ctx.closePath();
      const fill = ctx.createLinearGradient(0, top, 0, top + plotH);
      fill.addColorStop(0, color + "55");
      fill.addColorStop(1, color + "00");
      ctx.fillStyle = fill;
      ctx.fill();
    }
    ctx.restore();
  }
}

function niceStep(raw) {
  if (!(raw > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * power) return m * power;
  return 10 * power;
}
