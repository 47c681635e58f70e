// Colour scales and the drawing of one heatmap on a canvas. Plain ES module, no build step.

// Sequential: matplotlib's viridis at 9 evenly spaced points (matplotlib.colormaps['viridis'](k / 8)).
const VIRIDIS = ['#440154', '#472d7b', '#3b528b', '#2c728e', '#21918c', '#28ae80', '#5ec962', '#addc30',
  '#fde725'];
// Diverging: ColorBrewer's 11-class RdBu, blue (low) to red (high), white in the middle.
const RDBU = ['#053061', '#2166ac', '#4393c3', '#92c5de', '#d1e5f0', '#f7f7f7', '#fddbc7', '#f4a582',
  '#d6604d', '#b2182b', '#67001f'];
export const MISSING = '#d9d9d9';  // a cell without a value (the layer did not log at that step)
export const NONFINITE = '#000000';  // a value that is NaN or infinite

const LUT_SIZE = 257;  // odd: the middle entry is the middle anchor, exactly

function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function lut(anchors) {
  const colours = anchors.map(rgb);
  const table = [];
  for (let i = 0; i < LUT_SIZE; i++) {
    const position = (i / (LUT_SIZE - 1)) * (colours.length - 1);
    const k = Math.min(Math.floor(position), colours.length - 2);
    const f = position - k;
    table.push(colours[k].map((c, j) => Math.round(c + (colours[k + 1][j] - c) * f)));
  }
  return table;
}

const TABLES = {sequential: lut(VIRIDIS), diverging: lut(RDBU)};

/** A typed array from the routes' {dtype, shape, base64} (little-endian bytes). */
export function decode(array) {
  const text = atob(array.base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return array.dtype === 'float32' ? new Float32Array(bytes.buffer) : bytes;
}

/** The value of a cell of a decoded heatmap: null where the layer did not log at that step. */
export function cellValue(data, row, column) {
  const i = row * data.steps.length + column;
  return data.missing[i] ? null : data.values[i];
}

/**
 * The colour scale of a quantity over the heatmaps of the runs shown: one domain for all of them.
 * quantity: an entry of the `runs` route's `quantities`; heatmaps: decoded `heatmap` answers.
 */
export function sharedScale(quantity, heatmaps, log10OfZero) {
  let low = Infinity;
  let high = -Infinity;
  if (quantity.domain) {
    [low, high] = quantity.domain;
  } else {
    for (const {values, missing} of heatmaps) {
      for (let i = 0; i < values.length; i++) {
        const v = values[i];
        if (missing[i] || !Number.isFinite(v) || (quantity.log10 && v <= log10OfZero + 1)) continue;
        if (v < low) low = v;
        if (v > high) high = v;
      }
    }
    if (low > high) [low, high] = [0, 1];  // nothing finite to show
    if (quantity.scale === 'diverging') {
      const half = Math.max(Math.abs(low - quantity.centre), Math.abs(high - quantity.centre),
          quantity.min_half_width || 0);
      [low, high] = [quantity.centre - half, quantity.centre + half];
    } else if (low === high) {
      [low, high] = [low - 0.5, high + 0.5];
    }
  }
  const table = TABLES[quantity.scale];
  const position = (v) => {
    const t = (v - low) / (high - low);
    return Math.round(Math.min(1, Math.max(0, t)) * (LUT_SIZE - 1));
  };
  const missingColour = rgb(MISSING);
  const nonfiniteColour = rgb(NONFINITE);
  return {
    low, high, quantity, table,
    colour(v) {
      if (v === null) return missingColour;
      if (!Number.isFinite(v)) return nonfiniteColour;
      return table[position(v)];
    },
  };
}

/** A value as a person reads it: log10 quantities also as the number itself. */
export function formatValue(quantity, v, log10OfZero) {
  if (v === null) return 'not logged';
  if (!Number.isFinite(v)) return String(v);
  if (!quantity.log10) return v.toFixed(3);
  if (v <= log10OfZero + 0.01) return `0 (log10 written as ${log10OfZero})`;
  return `${v.toFixed(3)} (${Math.pow(10, v).toExponential(2)})`;
}

/** A tick label of a log10 axis: 10^v. */
export function formatTick(quantity, v) {
  if (!quantity.log10) return Number(v.toFixed(2)).toString();
  if (Math.abs(v - Math.round(v)) < 1e-9) return `1e${Math.round(v)}`;
  return Math.pow(10, v).toExponential(1);
}

/** Sizes `canvas` to width x height CSS pixels, at the screen's pixel density. */
function sizeCanvas(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
}

/**
 * Draws a decoded heatmap on `canvas` at width x height CSS pixels: each pixel takes the colour of the
 * cell under it, so that 1,000 columns on 400 pixels show every 2.5th column.
 */
export function drawHeatmap(canvas, data, scale, width, height) {
  sizeCanvas(canvas, width, height);
  const context = canvas.getContext('2d');
  const image = context.createImageData(canvas.width, canvas.height);
  const pixels = new Uint32Array(image.data.buffer);
  const rows = data.layers.length;
  const columns = data.steps.length;
  const pack = ([r, g, b]) => ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;  // RGBA, little-endian
  const line = new Uint32Array(canvas.width);
  let previousRow = -1;
  for (let y = 0; y < canvas.height; y++) {
    const row = Math.min(rows - 1, Math.floor((y * rows) / canvas.height));
    if (row !== previousRow) {
      for (let x = 0; x < canvas.width; x++) {
        const column = Math.min(columns - 1, Math.floor((x * columns) / canvas.width));
        line[x] = pack(scale.colour(cellValue(data, row, column)));
      }
      previousRow = row;
    }
    pixels.set(line, y * canvas.width);
  }
  context.putImageData(image, 0, 0);
}

/** Draws the colour bar of `scale` on a canvas of width x height CSS pixels. */
export function drawColourBar(canvas, scale, width, height) {
  sizeCanvas(canvas, width, height);
  const context = canvas.getContext('2d');
  for (let x = 0; x < canvas.width; x++) {
    const [r, g, b] = scale.table[Math.round((x / (canvas.width - 1)) * (LUT_SIZE - 1))];
    context.fillStyle = `rgb(${r},${g},${b})`;
    context.fillRect(x, 0, 1, canvas.height);
  }
}
