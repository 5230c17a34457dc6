// Live charts (uPlot, vendored): training and validation loss, learning rate, tokens/s,
// keyed by step, so records that arrive twice (a reload, a resumed run) never double.
import {h} from './dom.js';

const SERIES = {
  loss: [{label: 'training loss', key: 'loss', stroke: '#1d4ed8', width: 2},
         {label: 'validation loss', key: 'val_loss', stroke: '#c2410c', width: 2, dash: [6, 4],
          points: {show: true, size: 7}}],
  lr: [{label: 'learning rate', key: 'lr', stroke: '#047857', width: 2}],
  speed: [{label: 'tokens/s', key: 'tokens_per_s', stroke: '#7c3aed', width: 2}],
};

const tick = (u, splits) => splits.map((v) => (v === null ? '' : String(+v.toPrecision(3))));

class Chart {
  constructor(title, series, owner) {
    this.series = series;
    this.owner = owner;
    this.empty = h('p', {class: 'muted chart-empty'}, 'Waiting for the first logged step…');
    this.box = h('div', {class: 'chart-box'});
    this.el = h('figure', {class: 'chart'}, h('figcaption', {}, title), this.empty, this.box);
    this.plot = null;
  }

  draw(steps, points) {
    const xs = steps.filter((s) => this.series.some((d) => points.get(s)[d.key] !== undefined));
    if (!xs.length) return;
    this.empty.hidden = true;
    this.el.dataset.points = String(xs.length);
    const data = [xs, ...this.series.map((d) => xs.map((s) => points.get(s)[d.key] ?? null))];
    if (!this.plot) {
      const width = Math.max(260, this.el.getBoundingClientRect().width - 8);
      this.plot = new uPlot({
        width, height: 220, legend: {live: false},
        // The whole run's steps on the x axis once the total is known: progress at a glance.
        scales: {x: {time: false, range: (u, min, max) => [0, Math.max(max, this.owner.total || max)]}},
        axes: [{label: 'step'}, {size: 60, values: tick}],
        series: [{label: 'step'}, ...this.series.map((d) => ({
          label: d.label, stroke: d.stroke, width: d.width, dash: d.dash, spanGaps: true,
          points: d.points || {show: xs.length < 3}}))],
      }, data, this.box);
    } else {
      this.plot.setData(data);
    }
  }

  resize() {
    if (this.plot) this.plot.setSize({width: Math.max(260, this.el.getBoundingClientRect().width - 8), height: 220});
  }
}

export class Charts {
  constructor() {
    this.points = new Map();
    this.total = null;
    this.charts = [new Chart('Loss', SERIES.loss, this), new Chart('Learning rate', SERIES.lr, this),
                   new Chart('Speed', SERIES.speed, this)];
    this.el = h('div', {class: 'charts'}, this.charts.map((c) => c.el));
    this.onResize = () => this.charts.forEach((c) => c.resize());
    window.addEventListener('resize', this.onResize);
  }

  add(records, reset = false) {
    if (reset) this.points.clear();
    for (const r of records) {
      if (typeof r.step !== 'number') continue;
      const keep = {};
      for (const key of ['loss', 'val_loss', 'lr', 'tokens_per_s']) {
        if (typeof r[key] === 'number') keep[key] = r[key];
      }
      if (Object.keys(keep).length) this.points.set(r.step, {...(this.points.get(r.step) || {}), ...keep});
    }
    const steps = [...this.points.keys()].sort((a, b) => a - b);
    for (const c of this.charts) c.draw(steps, this.points);
  }

  setTotal(total) {
    if (total && total !== this.total) {
      this.total = total;
      this.add([]);
    }
  }

  close() { window.removeEventListener('resize', this.onResize); }
}
