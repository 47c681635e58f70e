// A layer's effective-learning-rate quantiles (log10) over time, as an SVG chart.

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 680;
const HEIGHT = 240;
const MARGIN = {left: 56, right: 96, top: 10, bottom: 30};
const SERIES = [
  {name: 'q95', label: '95% quantile', dash: '4 3'},
  {name: 'median', label: 'median', dash: ''},
  {name: 'q05', label: '5% quantile', dash: '4 3'},
];

function svg(tag, attributes = {}, text = '') {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

/** data: the `quantiles` route's answer ({steps, q05, median, q95}, log10 values). */
export function drawQuantiles(data, log10OfZero) {
  const chart = svg('svg', {'class': 'ko-quantiles', 'width': WIDTH, 'height': HEIGHT,
    'data-run': data.run, 'data-layer': data.layer});
  const usable = (v) => typeof v === 'number' && v > log10OfZero + 1;
  const values = SERIES.flatMap(({name}) => data[name].filter(usable));
  if (!data.steps.length || !values.length) {
    chart.append(svg('text', {x: MARGIN.left, y: HEIGHT / 2}, 'no effective-rate quantiles logged'));
    return chart;
  }
  let low = Math.floor(values.reduce((a, b) => Math.min(a, b)));
  let high = Math.ceil(values.reduce((a, b) => Math.max(a, b)));
  if (low === high) [low, high] = [low - 1, high + 1];
  const first = data.steps[0];
  const last = data.steps[data.steps.length - 1];
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const x = (step) => MARGIN.left + (last === first ? plotWidth / 2 : ((step - first) / (last - first)) * plotWidth);
  const y = (v) => MARGIN.top + (1 - (v - low) / (high - low)) * plotHeight;

  const decades = Math.max(1, Math.ceil((high - low) / 6));
  for (let v = low; v <= high; v += decades) {
    chart.append(svg('line', {class: 'ko-grid-line', x1: MARGIN.left, x2: MARGIN.left + plotWidth,
      y1: y(v), y2: y(v)}));
    chart.append(svg('text', {'x': MARGIN.left - 6, 'y': y(v) + 4, 'text-anchor': 'end'}, `1e${v}`));
  }
  for (let k = 0; k < 5; k++) {
    const step = Math.round(first + ((last - first) * k) / 4);
    chart.append(svg('text', {'x': x(step), 'y': HEIGHT - 10, 'text-anchor': 'middle'}, String(step)));
    if (last === first) break;
  }
  chart.append(svg('text', {'x': MARGIN.left + plotWidth / 2, 'y': HEIGHT - 0.5, 'text-anchor': 'middle',
    'class': 'ko-axis-title'}, 'step'));

  // The band between the 5% and 95% quantiles, where both are logged.
  const upper = [];
  const lower = [];
  data.steps.forEach((step, i) => {
    if (usable(data.q05[i]) && usable(data.q95[i])) {
      upper.push(`${x(step)},${y(data.q95[i])}`);
      lower.unshift(`${x(step)},${y(data.q05[i])}`);
    }
  });
  if (upper.length) chart.append(svg('polygon', {class: 'ko-band', points: [...upper, ...lower].join(' ')}));
  for (const {name, label, dash} of SERIES) {
    const points = data.steps.map((step, i) => (usable(data[name][i]) ? `${x(step)},${y(data[name][i])}` : null))
        .filter((p) => p !== null);
    chart.append(svg('polyline', {'class': `ko-series ko-${name}`, 'data-series': name,
      'data-points': points.length, 'points': points.join(' '), 'stroke-dasharray': dash}));
    const end = [...data[name]].reverse().find(usable);
    if (end !== undefined) {
      chart.append(svg('text', {x: MARGIN.left + plotWidth + 6, y: y(end) + 4, class: `ko-${name}-label`},
          label));
    }
  }
  return chart;
}
