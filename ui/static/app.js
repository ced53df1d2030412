// Beacon's dashboard. Registry records are written by whoever reaches the
// registry: everything from the server is rendered as text (textContent,
// text nodes, property values), never parsed as HTML.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);

  // el builds an element: props are set as properties (className, title,
  // value, ...) or, for data-*, as attributes; children are nodes or text.
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k.startsWith('data-')) e.setAttribute(k, String(v));
      else e[k] = v;
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function ms(ns) {
    if (!ns) return '—';
    const m = ns / 1e6;
    if (m < 1) return (ns / 1e3).toFixed(0) + ' µs';
    if (m < 100) return m.toFixed(2) + ' ms';
    return m.toFixed(0) + ' ms';
  }

  function clock(t) {
    const d = new Date(t);
    if (isNaN(d)) return String(t);
    const p = (n, w) => String(n).padStart(w || 2, '0');
    return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds()) + '.' + p(d.getMilliseconds(), 3);
  }

  function kv(m) {
    const keys = Object.keys(m || {}).sort();
    if (!keys.length) return el('span', { className: 'dim' }, '—');
    const box = el('span', { className: 'kv' });
    for (const k of keys) box.append(el('code', {}, k + '=' + m[k]));
    return box;
  }

  async function getJSON(url) {
    const r = await fetch(url, { headers: { 'Accept': 'application/json' }, cache: 'no-store' });
    const body = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw Object.assign(new Error(body.error || r.statusText), { status: r.status });
    return body;
  }

  // ---- state ---------------------------------------------------------------

  let selected = null; // the service shown
  let info = { timeout_ms: 10000 };
  let servicesSeq = 0, detailSeq = 0;
  let timers = {};

  function later(key, f, delay) {
    if (timers[key]) return;
    timers[key] = setTimeout(() => { timers[key] = null; f(); }, delay === undefined ? 30 : delay);
  }

  function banner(text) {
    const b = $('banner');
    b.textContent = text || '';
    b.hidden = !text;
  }

  function selectedFromHash() {
    const h = location.hash;
    if (!h.startsWith('#/service/')) return null;
    try { return decodeURIComponent(h.slice('#/service/'.length)) || null; } catch (e) { return null; }
  }

  // ---- services ------------------------------------------------------------

  async function refreshServices() {
    const seq = ++servicesSeq;
    let rows;
    try { rows = await getJSON('/api/services'); } catch (e) { banner('services: ' + e.message); return; }
    if (seq !== servicesSeq) return;
    const tbody = $('service-rows');
    const trs = rows.map((s) => {
      const a = el('a', { href: '#/service/' + encodeURIComponent(s.name) }, s.name);
      const versions = s.versions.map((v) => (v.version || '—') + ' (' + v.nodes + ')').join(', ');
      const tr = el('tr', { 'data-service': s.name, className: s.name === selected ? 'sel' : '' },
        el('td', {}, a), el('td', {}, versions), el('td', { className: 'num nodes' }, s.nodes));
      tr.addEventListener('click', (ev) => { if (ev.target !== a) location.hash = a.getAttribute('href'); });
      return tr;
    });
    tbody.replaceChildren(...trs);
    $('service-count').textContent = rows.length ? '(' + rows.length + ')' : '';
    $('no-services').hidden = rows.length > 0;
  }

  // ---- one service ---------------------------------------------------------

  function valueTree(v) {
    if (!v) return el('span', { className: 'dim' }, '—');
    const label = el('span', {}, el('b', {}, v.name || ''), ' ', el('span', { className: 'type' }, v.type || ''));
    if (!v.values || !v.values.length) return el('div', { className: 'tree' }, label);
    const ul = el('ul', {});
    for (const c of v.values) {
      ul.append(el('li', {}, fieldTree(c)));
    }
    return el('div', { className: 'tree' }, label, ul);
  }

  function fieldTree(v) {
    const line = el('span', {}, el('span', { className: 'field' }, v.name || ''), ' ', el('span', { className: 'type' }, v.type || ''));
    if (!v.values || !v.values.length) return line;
    const ul = el('ul', {});
    for (const c of v.values) ul.append(el('li', {}, fieldTree(c)));
    return el('span', {}, line, ul);
  }

  // skeleton is a request to start from: the shape's fields with empty values.
  function skeleton(v, depth) {
    if (!v || depth > 6) return null;
    const t = String(v.type || '');
    if (v.values && v.values.length && !/^(\[\]|repeated |map)/.test(t)) {
      const o = {};
      for (const c of v.values) {
        // defineProperty: a field named __proto__ is a field, not a prototype.
        if (c && c.name) Object.defineProperty(o, c.name, { value: skeleton(c, depth + 1), enumerable: true, writable: true, configurable: true });
      }
      return o;
    }
    if (/^(\[\]|repeated )/.test(t)) return [];
    if (/^map/.test(t)) return {};
    if (/^(string|\[\]byte|bytes)$/.test(t) || t === 'time.Time') return '';
    if (/^(u?int\d*|float\d*|double|s?fixed\d+|sint\d+|uintptr|time\.Duration)$/.test(t)) return 0;
    if (t === 'bool') return false;
    if (depth === 0) return {};
    return null;
  }

  function healthCell(h, foreignNote) {
    if (!h) return el('span', { className: 'dim', title: 'no call from this dashboard yet' }, '—');
    if (h.foreign) return el('span', { className: 'badge off' }, 'other protocol');
    if (h.probing) return el('span', { className: 'badge warn' }, 'trial request');
    if (h.ejected) {
      const until = h.until ? ' until ' + clock(h.until) : '';
      return el('span', { className: 'badge bad', title: h.incidents + ' incident(s) in a row' }, 'ejected' + until);
    }
    return el('span', { className: 'badge ok' }, 'healthy');
  }

  let detailFor = null; // the service the form was built for

  async function refreshDetail() {
    const name = selected;
    const seq = ++detailSeq;
    if (!name) {
      $('pick').hidden = false;
      $('detail-body').hidden = true;
      return;
    }
    let svc;
    try {
      svc = await getJSON('/api/service?name=' + encodeURIComponent(name));
    } catch (e) {
      if (seq !== detailSeq) return;
      if (e.status === 404) {
        svc = { name: name, versions: [], selected: false };
      } else {
        banner('service ' + name + ': ' + e.message);
        return;
      }
    }
    if (seq !== detailSeq || name !== selected) return;
    $('pick').hidden = true;
    $('detail-body').hidden = false;
    $('detail-name').textContent = name;
    renderVersions(svc);
    renderForm(svc);
  }

  function renderVersions(svc) {
    const box = $('versions');
    if (!svc.versions.length) {
      box.replaceChildren(el('p', { className: 'empty', id: 'gone' }, 'No nodes: the service is not registered (any more).'));
      return;
    }
    const parts = [];
    for (const v of svc.versions) {
      const sec = el('div', { className: 'version', 'data-version': v.version });
      sec.append(el('h3', {}, 'version ', el('code', {}, v.version || '—'), ' · ' + v.nodes.length + (v.nodes.length === 1 ? ' node' : ' nodes')));
      if (v.metadata && Object.keys(v.metadata).length) sec.append(el('p', {}, 'metadata ', kv(v.metadata)));
      const rows = v.nodes.map((n) => {
        const h = n.health;
        return el('tr', { 'data-node': n.id },
          el('td', {}, el('code', {}, n.id)),
          el('td', { className: 'addr' }, el('code', {}, n.address)),
          el('td', {}, kv(n.metadata)),
          el('td', { className: 'health' }, healthCell(h)),
          el('td', { className: 'num inflight' }, h ? h.in_flight : '—'),
          el('td', { className: 'num latency' }, h ? ms(h.latency_ns) : '—'),
          el('td', { className: 'num' }, h ? h.weight : '—'));
      });
      sec.append(el('table', { className: 'nodes' },
        el('thead', {}, el('tr', {}, el('th', {}, 'Node'), el('th', {}, 'Address'), el('th', {}, 'Metadata'),
          el('th', {}, 'Health'), el('th', { className: 'num' }, 'In flight'), el('th', { className: 'num' }, 'Latency'), el('th', { className: 'num' }, 'Weight'))),
        el('tbody', {}, ...rows)));
      if (v.endpoints.length) {
        const eps = v.endpoints.map((e) => el('tr', { 'data-endpoint': e.name },
          el('td', {}, el('a', { href: '#', className: 'ep', title: 'call it' }, e.name), e.metadata && Object.keys(e.metadata).length ? el('div', {}, kv(e.metadata)) : null),
          el('td', {}, valueTree(e.request)),
          el('td', {}, valueTree(e.response))));
        for (const tr of eps) {
          const name = tr.getAttribute('data-endpoint');
          const e = v.endpoints.find((x) => x.name === name);
          tr.querySelector('a.ep').addEventListener('click', (ev) => { ev.preventDefault(); chooseEndpoint(e); });
        }
        sec.append(el('table', { className: 'endpoints' },
          el('thead', {}, el('tr', {}, el('th', {}, 'Endpoint'), el('th', {}, 'Request'), el('th', {}, 'Response'))),
          el('tbody', {}, ...eps)));
      } else {
        sec.append(el('p', { className: 'dim' }, 'No endpoints published.'));
      }
      parts.push(sec);
    }
    box.replaceChildren(...parts);
  }

  let endpoints = new Map();

  function chooseEndpoint(e) {
    $('call-endpoint').value = e.name;
    fillSkeleton(true);
    $('call-body').focus();
  }

  function fillSkeleton(force) {
    const e = endpoints.get($('call-endpoint').value);
    const body = $('call-body');
    if (!e || !e.request) return;
    const cur = body.value.trim();
    if (!force && cur !== '' && cur !== '{}' && body.dataset.auto !== '1') return;
    body.value = JSON.stringify(skeleton(e.request, 0) || {}, null, 2);
    body.dataset.auto = '1';
  }

  function renderForm(svc) {
    endpoints = new Map();
    for (const v of svc.versions) for (const e of v.endpoints) if (!endpoints.has(e.name)) endpoints.set(e.name, e);
    $('call-endpoints').replaceChildren(...[...endpoints.keys()].sort().map((n) => el('option', { value: n })));
    const sel = $('call-node');
    const keep = sel.value;
    const opts = [el('option', { value: '' }, 'any (selector picks)')];
    for (const v of svc.versions) for (const n of v.nodes) opts.push(el('option', { value: n.id }, n.id + ' · ' + n.address + (v.version ? ' · ' + v.version : '')));
    sel.replaceChildren(...opts);
    sel.value = [...sel.options].some((o) => o.value === keep) ? keep : '';
    if (detailFor !== svc.name) {
      // A new service: a fresh form.
      detailFor = svc.name;
      $('call-endpoint').value = endpoints.size ? [...endpoints.keys()].sort()[0] : '';
      $('call-body').value = '{}';
      $('call-body').dataset.auto = '1';
      $('call-timeout').value = info.timeout_ms || '';
      fillSkeleton(true);
      clearResult();
    }
  }

  function clearResult() {
    $('call-status').textContent = '';
    $('call-status').className = 'status';
    $('call-time').textContent = '';
    $('call-response').hidden = true;
    $('call-attempts').hidden = true;
  }

  async function submitCall(ev) {
    ev.preventDefault();
    const endpoint = $('call-endpoint').value.trim();
    const text = $('call-body').value.trim() || '{}';
    let request;
    try { request = JSON.parse(text); } catch (e) {
      showStatus(false, 'request is not JSON: ' + e.message);
      return;
    }
    const req = { service: selected, endpoint: endpoint, request: request };
    if ($('call-node').value) req.node = $('call-node').value;
    const t = parseInt($('call-timeout').value, 10);
    if (t > 0) req.timeout_ms = t;
    const btn = $('call-submit');
    btn.disabled = true;
    clearResult();
    showStatus(null, 'calling…');
    try {
      const r = await fetch('/api/call', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', 'X-Beacon-UI': '1' },
        body: JSON.stringify(req),
      });
      const res = await r.json().catch(() => ({ ok: false, error: r.statusText }));
      if (!r.ok) { showStatus(false, res.error || r.statusText); return; }
      showResult(res);
    } catch (e) {
      showStatus(false, e.message);
    } finally {
      btn.disabled = false;
      later('detail', refreshDetail, 0);
    }
  }

  function showStatus(ok, text) {
    const s = $('call-status');
    s.textContent = text;
    s.className = 'status ' + (ok === null ? '' : ok ? 'ok' : 'bad');
  }

  function showResult(res) {
    showStatus(res.ok, res.ok ? 'OK' : 'status ' + res.code + (res.not_run ? ' (not run)' : ''));
    $('call-time').textContent = ms(res.duration_ns);
    const pre = $('call-response');
    if (res.ok) {
      pre.textContent = res.response !== undefined ? JSON.stringify(res.response, null, 2) : (res.response_text || '');
    } else {
      pre.textContent = res.error || '';
    }
    pre.className = 'response ' + (res.ok ? '' : 'err');
    pre.hidden = false;
    const rows = (res.attempts || []).map((a) => el('tr', {},
      el('td', {}, a.number), el('td', {}, el('code', {}, a.node || '—')), el('td', { className: 'addr' }, el('code', {}, a.address || '—')),
      el('td', { className: 'num' }, ms(a.duration_ns)), el('td', {}, a.error ? a.error : 'answered')));
    const table = $('call-attempts');
    table.tBodies[0].replaceChildren(...rows);
    table.hidden = rows.length === 0;
  }

  // ---- the event log -------------------------------------------------------

  const maxLog = 500;

  function logEvent(e) {
    const tbody = $('log-rows');
    const tr = el('tr', { className: 'ev-' + e.type, 'data-event': e.type, 'data-service': e.service, 'data-node': e.node },
      el('td', { className: 'time' }, clock(e.time)), el('td', {}, el('span', { className: 'badge ' + e.type }, e.type)),
      el('td', {}, e.service), el('td', {}, e.version || ''), el('td', {}, el('code', {}, e.node || '')),
      el('td', { className: 'addr' }, el('code', {}, e.address || '')));
    tbody.prepend(tr);
    while (tbody.rows.length > maxLog) tbody.deleteRow(-1);
  }

  function connect() {
    const es = new EventSource('/api/events');
    const live = $('live');
    es.onopen = () => {
      live.textContent = 'live';
      live.className = 'badge ok';
      later('services', refreshServices, 0); // whatever was missed
      later('detail', refreshDetail, 0);
    };
    es.onerror = () => {
      live.textContent = 'reconnecting';
      live.className = 'badge warn';
    };
    es.addEventListener('registry', (m) => {
      let e;
      try { e = JSON.parse(m.data); } catch (err) { return; }
      logEvent(e);
      later('services', refreshServices);
      if (e.service === selected) later('detail', refreshDetail);
    });
    es.addEventListener('health', (m) => {
      let e;
      try { e = JSON.parse(m.data); } catch (err) { return; }
      if (e.service === selected) later('detail', refreshDetail);
    });
    es.addEventListener('watch', (m) => {
      let st;
      try { st = JSON.parse(m.data); } catch (err) { return; }
      banner(st.ok ? '' : st.error || 'registry watch down');
    });
  }

  // ---- start ---------------------------------------------------------------

  function route() {
    selected = selectedFromHash();
    for (const tr of $('service-rows').rows) tr.className = tr.getAttribute('data-service') === selected ? 'sel' : '';
    later('detail', refreshDetail, 0);
  }

  async function start() {
    try {
      info = await getJSON('/api/info');
      $('registry').textContent = info.registry;
      $('selector').textContent = info.selector;
    } catch (e) {
      banner('info: ' + e.message);
    }
    $('call-form').addEventListener('submit', submitCall);
    $('call-endpoint').addEventListener('change', () => fillSkeleton(false));
    $('call-body').addEventListener('input', () => { $('call-body').dataset.auto = '0'; });
    window.addEventListener('hashchange', route);
    route();
    refreshServices();
    connect();
  }

  start();
})();
