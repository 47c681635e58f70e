// The Optimizer tab: TensorBoard loads this module in an iframe and calls render().
// Heatmaps of OptimizerDiagnostics' per-layer quantities (rows: layers in model order; columns: the
// logged steps TensorBoard kept), several runs side by side on one colour scale.

import {cellValue, decode, drawColourBar, drawHeatmap, formatTick, formatValue, sharedScale} from './heatmap.js';
import {drawQuantiles} from './quantiles.js';

const SVG = 'http://www.w3.org/2000/svg';
const MAX_HEIGHT = 480;  // of a heatmap, in CSS pixels
const MAX_ROW = 22;  // pixels a row at most
const LABEL_MIN_ROW = 14;  // rows thinner than this get a label every few rows

const state = {
  index: null,  // the `runs` route
  quantity: null,  // a key of index.quantities
  selected: [],  // run names, in the order shown
  heatmaps: new Map(),  // `${run}\n${quantity}` -> the `heatmap` route's answer, or an Error
  detail: null,  // {run, layer}
};

function element(tag, attributes = {}, ...children) {
  const node = tag.startsWith('svg:') ? document.createElementNS(SVG, tag.slice(4))
      : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === 'text') node.textContent = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function getJson(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${response.status}: ${await response.text()}`);
  return response.json();
}

function quantityOf(key) {
  return state.index.quantities.find((q) => q.key === key);
}

function setState(value, message = '') {
  document.body.dataset.state = value;
  if (message) document.body.dataset.message = message;
}

export async function render() {
  setState('loading');
  document.head.append(element('link', {rel: 'stylesheet', href: './static/style.css'}));
  const root = element('div', {class: 'ko-root'});
  document.body.append(root);
  try {
    state.index = await getJson('./runs');
  } catch (error) {
    root.append(element('p', {class: 'ko-error', text: `Could not list the runs: ${error.message}`}));
    setState('error', error.message);
    return;
  }
  const runs = state.index.runs;
  if (!runs.length) {
    root.append(element('p', {class: 'ko-empty',
      text: 'No run holds OptimizerDiagnostics\' layer tags (effective_lr_log10/layer/..., ' +
          'update_ratio_log10/layer/...). Train with keras_optlab.callbacks.OptimizerDiagnostics ' +
          'and point TensorBoard at its log directory.'}));
    setState('ready');
    return;
  }
  const logged = new Set(runs.flatMap((run) => run.quantities));
  const available = state.index.quantities.filter((q) => logged.has(q.key));
  const wanted = new URLSearchParams(location.hash.slice(1)).get('quantity');
  state.quantity = available.some((q) => q.key === wanted) ? wanted : available[0].key;
  state.selected = runs.map((run) => run.run);

  const quantityButtons = element('div', {class: 'ko-quantities', role: 'group'});
  for (const q of available) {
    quantityButtons.append(element('button', {
      'type': 'button', 'data-quantity': q.key, 'title': q.description, 'text': q.title,
      'onclick': () => {
        state.quantity = q.key;
        history.replaceState(null, '', `#quantity=${q.key}`);
        update();
      },
    }));
  }
  const runBoxes = element('div', {class: 'ko-runs'});
  for (const run of runs) {
    const box = element('input', {type: 'checkbox', checked: '', 'data-run': run.run});
    box.addEventListener('change', () => {
      state.selected = runs.map((r) => r.run).filter((name) =>
        runBoxes.querySelector(`input[data-run="${CSS.escape(name)}"]`).checked);
      update();
    });
    runBoxes.append(element('label', {}, box, ` ${run.run}`));
  }
  // TensorBoard's own reload does not reach an iframe: this reads the runs and their data again.
  const reload = element('button', {type: 'button', class: 'ko-reload', text: 'Reload',
    onclick: () => location.reload()});
  const samples = state.index.samples_per_tag;
  const note = element('p', {class: 'ko-note', text:
    'Rows: layers in model order. Columns: the logged steps TensorBoard kept, evenly spaced: ' +
    (samples === 0 ? 'every step (--samples_per_plugin scalars=0). '
        : `at most ${samples} a tag, sampled at random with the last step always kept; to see every ` +
          'step, start TensorBoard with --samples_per_plugin scalars=N, N at least the steps logged. ') +
    'Red marks under a heatmap: steps with NaN or infinite weights or state. ' +
    'Grey: not logged; black: a NaN or infinite value. Click a cell for the layer\'s ' +
    'effective-rate quantiles.'});
  root.append(
      element('div', {class: 'ko-header'}, element('h1', {text: 'Optimizer'}), quantityButtons, reload),
      runBoxes,
      element('div', {class: 'ko-legend'}),
      note,
      element('div', {class: 'ko-panels'}),
      element('div', {class: 'ko-detail'}),
      element('div', {class: 'ko-tooltip', hidden: ''}),
  );
  await update();
}

async function update() {
  setState('loading');
  const quantity = state.quantity;
  for (const button of document.querySelectorAll('.ko-quantities button')) {
    button.setAttribute('aria-pressed', String(button.dataset.quantity === quantity));
  }
  const runs = state.index.runs.filter((run) => state.selected.includes(run.run));
  const panels = document.querySelector('.ko-panels');
  panels.replaceChildren();
  const shown = [];
  for (const run of runs) {
    const panel = element('section', {'class': 'ko-panel', 'data-run': run.run},
        element('h2', {text: run.run}));
    panels.append(panel);
    if (!run.quantities.includes(quantity)) {
      panel.append(element('p', {class: 'ko-empty', text: `${quantityOf(quantity).title}: not logged`}));
      continue;
    }
    panel.append(element('p', {class: 'ko-empty', text: 'loading...'}));
    shown.push({run, panel});
  }
  const key = (run) => `${run}\n${quantity}`;
  await Promise.all(shown.map(async ({run}) => {
    if (!state.heatmaps.has(key(run.run))) {
      const query = new URLSearchParams({run: run.run, quantity});
      try {
        const data = await getJson(`./heatmap?${query}`);
        data.values = decode(data.values);
        data.missing = decode(data.missing);
        state.heatmaps.set(key(run.run), data);
      } catch (error) {
        state.heatmaps.set(key(run.run), error);
      }
    }
    if (state.quantity === quantity) drawPanels(quantity, shown, key);
  }));
  if (state.quantity !== quantity) return;
  const failed = shown.map(({run}) => state.heatmaps.get(key(run.run))).find((d) => d instanceof Error);
  if (failed) {
    setState('error', failed.message);
  } else {
    performance.mark('keras_optlab:heatmaps-drawn');
    setState('ready');
  }
}

function drawPanels(quantityKey, shown, key) {
  const quantity = quantityOf(quantityKey);
  const loaded = shown.map(({run, panel}) => ({run, panel, data: state.heatmaps.get(key(run.run))}))
      .filter(({data}) => data !== undefined);
  const good = loaded.filter(({data}) => !(data instanceof Error));
  const scale = sharedScale(quantity, good.map(({data}) => data), state.index.log10_of_zero);
  drawLegend(scale, good.length);
  const width = document.querySelector('.ko-panels').clientWidth;
  const perPanel = Math.max(320, Math.floor((width - 16 * (shown.length - 1)) / shown.length));
  for (const {panel, data} of loaded) {
    panel.replaceChildren(panel.firstChild);
    if (data instanceof Error) {
      panel.append(element('p', {class: 'ko-error', text: data.message}));
    } else {
      panel.append(heatmapView(data, scale, perPanel));
    }
  }
}

function drawLegend(scale, runCount) {
  const legend = document.querySelector('.ko-legend');
  const bar = element('canvas', {'class': 'ko-colour-bar', 'data-low': scale.low, 'data-high': scale.high});
  const width = 320;
  drawColourBar(bar, scale, width, 12);
  const ticks = element('div', {class: 'ko-ticks'});
  for (const f of [0, 0.5, 1]) {
    const v = scale.low + f * (scale.high - scale.low);
    ticks.append(element('span', {style: `left:${f * width}px`, text: formatTick(scale.quantity, v)}));
  }
  legend.replaceChildren(
      element('span', {class: 'ko-legend-title', text: scale.quantity.title}),
      element('div', {class: 'ko-bar'}, bar, ticks),
      element('span', {class: 'ko-legend-note',
        text: runCount > 1 ? `one scale for the ${runCount} runs shown` : ''}),
  );
}

function labelWidth(layers) {
  const context = document.createElement('canvas').getContext('2d');
  context.font = '12px sans-serif';
  const widest = Math.max(...layers.map((name) => context.measureText(name).width));
  return Math.min(180, Math.ceil(widest) + 8);
}

function heatmapView(data, scale, panelWidth) {
  const rows = data.layers.length;
  const columns = data.steps.length;
  const quantity = scale.quantity;
  const rowHeight = Math.max(1, Math.min(MAX_ROW, Math.floor(MAX_HEIGHT / Math.max(rows, 1))));
  const height = rowHeight * rows;
  const labels = labelWidth(data.layers);
  const width = Math.max(120, panelWidth - labels - 8);
  const labelColumn = element('div', {class: 'ko-labels', style: `width:${labels}px;height:${height}px`});
  const every = Math.ceil(LABEL_MIN_ROW / rowHeight);
  data.layers.forEach((layer, i) => {
    if (i % every) return;
    labelColumn.append(element('div', {
      'class': 'ko-label', 'data-layer': layer, 'title': layer, 'text': layer,
      'style': `top:${i * rowHeight}px;height:${Math.max(rowHeight, LABEL_MIN_ROW)}px;` +
          `line-height:${Math.max(rowHeight, LABEL_MIN_ROW)}px`,
    }));
  });
  const canvas = element('canvas', {
    'class': 'ko-heatmap', 'data-run': data.run, 'data-quantity': data.quantity, 'data-tag': data.tag,
    'data-rows': rows, 'data-columns': columns, 'data-low': scale.low, 'data-high': scale.high,
  });
  if (columns && rows) drawHeatmap(canvas, data, scale, width, height);
  const cell = (event) => {
    const box = canvas.getBoundingClientRect();
    const column = Math.floor(((event.clientX - box.left) / box.width) * columns);
    const row = Math.floor(((event.clientY - box.top) / box.height) * rows);
    if (column < 0 || column >= columns || row < 0 || row >= rows) return null;
    return {row, column};
  };
  const tooltip = document.querySelector('.ko-tooltip');
  canvas.addEventListener('mousemove', (event) => {
    const at = cell(event);
    if (!at) return;
    const value = cellValue(data, at.row, at.column);
    tooltip.replaceChildren(
        element('div', {class: 'ko-tip-layer', text: data.layers[at.row]}),
        element('div', {text: `step ${data.steps[at.column]}`}),
        element('div', {text: `${quantity.title}: ${formatValue(quantity, value, state.index.log10_of_zero)}`}),
    );
    Object.assign(tooltip.dataset, {
      run: data.run, layer: data.layers[at.row], step: data.steps[at.column],
      value: value === null ? 'null' : String(value),
    });
    tooltip.style.left = `${event.clientX + window.scrollX + 14}px`;
    tooltip.style.top = `${event.clientY + window.scrollY + 14}px`;
    tooltip.hidden = false;
  });
  canvas.addEventListener('mouseleave', () => {
    tooltip.hidden = true;
  });
  canvas.addEventListener('click', (event) => {
    const at = cell(event);
    if (at) showQuantiles(data.run, data.layers[at.row]);
  });
  const plot = element('div', {class: 'ko-plot'}, canvas, timeAxis(data, width));
  const grid = element('div', {class: 'ko-grid'}, labelColumn, plot);
  const footer = element('p', {class: 'ko-panel-note', text:
    `${rows} layers x ${columns} steps` + (columns ? ` (${data.steps[0]} to ${data.steps[columns - 1]})` : '') +
    (data.tag.includes('over_execution') ? '; update ratio over each execution' : '') +
    (data.order === 'layer_order' ? '' : '; no layer_order summary: layers sorted by name') +
    (data.aligned ? '' : '; the layers were sampled at different steps (TensorBoard samples each tag ' +
        'on its own): grey cells are steps a layer\'s sample lacks; --samples_per_plugin scalars=N, ' +
        'N at least the steps logged, keeps every step')});
  return element('div', {}, grid, footer);
}

function columnOf(steps, step) {
  // The first column at or after `step` (a non-finite step TensorBoard did not keep for this tag).
  let low = 0;
  let high = steps.length - 1;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (steps[middle] < step) low = middle + 1;
    else high = middle;
  }
  return low;
}

function timeAxis(data, width) {
  const columns = data.steps.length;
  const svg = element('svg:svg', {class: 'ko-axis', width, height: 34});
  svg.append(element('svg:line', {x1: 0, x2: width, y1: 0.5, y2: 0.5, class: 'ko-axis-line'}));
  const x = (i) => ((i + 0.5) * width) / columns;
  const ticks = Math.min(columns, Math.max(2, Math.floor(width / 90)));
  for (let k = 0; k < ticks && columns; k++) {
    const i = ticks === 1 ? 0 : Math.round((k * (columns - 1)) / (ticks - 1));
    const anchor = k === 0 ? 'start' : (k === ticks - 1 ? 'end' : 'middle');
    svg.append(element('svg:line', {x1: x(i), x2: x(i), y1: 0, y2: 4, class: 'ko-axis-line'}));
    svg.append(element('svg:text', {'x': k === 0 ? 0 : (k === ticks - 1 ? width : x(i)), 'y': 16,
      'text-anchor': anchor, 'text': String(data.steps[i])}));
  }
  data.nonfinite.steps.forEach((step, k) => {
    const position = x(columnOf(data.steps, step));
    svg.append(element('svg:path', {
      'class': 'ko-nonfinite', 'data-step': step, 'data-count': data.nonfinite.counts[k],
      'd': `M${position - 5},32 L${position + 5},32 L${position},22 Z`,
    }, element('svg:title', {text: `step ${step}: ${data.nonfinite.counts[k]} non-finite elements`})));
  });
  return svg;
}

async function showQuantiles(run, layer) {
  state.detail = {run, layer};
  const detail = document.querySelector('.ko-detail');
  detail.replaceChildren(element('p', {class: 'ko-empty', text: `loading ${layer}...`}));
  let data;
  try {
    data = await getJson(`./quantiles?${new URLSearchParams({run, layer})}`);
  } catch (error) {
    detail.replaceChildren(element('p', {class: 'ko-error', text: error.message}));
    return;
  }
  if (state.detail.run !== run || state.detail.layer !== layer) return;
  detail.replaceChildren(
      element('h2', {text: `Effective learning rate of ${layer} in ${run}`}),
      drawQuantiles(data, state.index.log10_of_zero),
  );
  for (const label of document.querySelectorAll('.ko-label')) {
    label.classList.toggle('ko-selected',
        label.dataset.layer === layer && label.closest('.ko-panel').dataset.run === run);
  }
}
