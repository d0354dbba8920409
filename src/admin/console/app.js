// keygate admin console: a client of the admin API (SPEC §4) on the same origin.
//
// Rules this file keeps:
// - The admin key lives in sessionStorage only (this tab), is sent only in the
//   Authorization header of same-origin fetches, and never appears in a URL.
// - Every DOM node is built with createElement/textContent: nothing the API returns is
//   ever parsed as HTML. No inline scripts or styles (the page's CSP forbids them).
// - Every API error is shown to the person with its error_code and text.
'use strict';

(() => {
  const KEY_STORAGE = 'keygate.adminKey';
  const CLASSES = ['2xx', '3xx', '4xx', '5xx'];
  const STATS_DAYS = 30;
  // `integrations` is the admin API's permission; it need not be a configured module.
  const ADMIN_PERMISSION = {
    name: 'integrations',
    description: 'The admin API: manage tokens (this console, the token CLI)',
  };

  const $ = (id) => document.getElementById(id);

  /** Builds an element. attrs: class, text, on<event> handlers, anything else as attribute. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  /** Builds an SVG element. */
  function s(tag, attrs, ...children) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') el.textContent = String(v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  // ---------------------------------------------------------------- API client

  /** An error answer of the admin API (or a network failure, error_code NETWORK). */
  class ApiError extends Error {
    constructor(status, code, errors) {
      super(`${code}: ${errors.join('; ')}`);
      this.status = status;
      this.code = code;
      this.errors = errors;
    }
    get isAuth() {
      return this.status === 401 || (this.status === 403 && this.code === 'PERM_DENIED');
    }
  }

  const state = {
    key: null,
    modules: [],
    extensions: [],
    view: null,
    list: { offset: 0, limit: 25, status: '', extension: '', search: '', total: 0, seq: 0 },
    token: null,
    tab: 'general',
    stats: null,
    focusAfterList: null,
  };

  /** Calls the admin API; resolves to {data, headers, status} or throws ApiError. */
  async function api(method, path, body) {
    if (!state.key) throw new ApiError(0, 'SIGNED_OUT', ['Sign in first.']);
    const headers = { Authorization: `ApiKey ${state.key}`, Accept: 'application/json' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'NETWORK', [`The admin API could not be reached (${e.message}).`]);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = undefined;
      }
    }
    if (!res.ok) {
      if (data && typeof data.error_code === 'string') {
        const errors = Array.isArray(data.errors) && data.errors.length ? data.errors.map(String) : [res.statusText];
        throw new ApiError(res.status, data.error_code, errors);
      }
      throw new ApiError(res.status, `HTTP_${res.status}`, [text.slice(0, 300) || res.statusText || 'error']);
    }
    if (data === undefined) throw new ApiError(res.status, 'BAD_RESPONSE', ['The answer was not JSON.']);
    return { data, headers: res.headers, status: res.status };
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- messages

  /** Puts `err` into an inline error element (role=alert). */
  function showErrorIn(el, err) {
    el.replaceChildren();
    if (err instanceof ApiError) {
      append(el, [h('strong', { text: err.code }), ' ', err.errors.join('\n')]);
    } else {
      append(el, [String(err && err.message ? err.message : err)]);
    }
    el.hidden = false;
  }

  function hideError(el) {
    el.hidden = true;
    el.replaceChildren();
  }

  /** Shows `err` in the page banner. */
  function showBanner(err) {
    if (err instanceof ApiError) {
      $('banner-code').textContent = err.code;
      $('banner-msg').textContent = err.errors.join(' ');
      $('banner-signin').hidden = !err.isAuth;
    } else {
      $('banner-code').textContent = 'ERROR';
      $('banner-msg').textContent = String(err && err.message ? err.message : err);
      $('banner-signin').hidden = true;
    }
    $('banner').hidden = false;
  }

  function hideBanner() {
    $('banner').hidden = true;
  }

  let toastTimer = null;
  function toast(text) {
    const t = $('toast');
    t.textContent = text;
    t.classList.add('show');
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => t.classList.remove('show'), 3500);
  }

  // ---------------------------------------------------------------- formatting

  function fmtTime(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    return `${d.toISOString().slice(0, 16).replace('T', ' ')} UTC`;
  }

  function fmtDay(iso) {
    return iso ? new Date(iso).toISOString().slice(0, 10) : '—';
  }

  function relative(iso) {
    const ms = new Date(iso).getTime() - Date.now();
    const abs = Math.abs(ms);
    const unit = abs >= 86400000 ? ['day', 86400000] : abs >= 3600000 ? ['hour', 3600000] : ['minute', 60000];
    const n = Math.max(1, Math.round(abs / unit[1]));
    const words = `${n} ${unit[0]}${n === 1 ? '' : 's'}`;
    return ms >= 0 ? `in ${words}` : `${words} ago`;
  }

  function fmtExpiry(t) {
    if (!t.expires_at) return 'Never (perpetual)';
    return `${fmtTime(t.expires_at)} (${relative(t.expires_at)})`;
  }

  function cap(str) {
    return str ? str.charAt(0).toUpperCase() + str.slice(1) : str;
  }

  function extension(name) {
    return state.extensions.find((e) => e.name === name) || { name, code: '', description: '' };
  }

  function extLabel(name) {
    const e = extension(name);
    return e.code ? `${cap(e.name)} ${e.code}` : cap(e.name);
  }

  function permsLabel(p) {
    if (p.length === 1 && p[0] === 'all') return 'All modules';
    return `${p.length} module${p.length === 1 ? '' : 's'}`;
  }

  function badge(status) {
    return h('span', { class: `badge ${status}`, text: cap(status) });
  }

  /** Modules a token can be given: the configured ones plus the admin permission. */
  function permissionChoices() {
    const list = state.modules.slice();
    if (!list.some((m) => m.name === ADMIN_PERMISSION.name)) list.push(ADMIN_PERMISSION);
    return list;
  }

  /** `YYYY-MM-DD` of today (UTC), the earliest custom expiry date. */
  function todayUtc() {
    return new Date().toISOString().slice(0, 10);
  }

  /** A custom date means the end of that day, UTC. */
  function endOfDay(date) {
    return `${date}T23:59:59Z`;
  }

  function checkDate(date) {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(date)) return 'Choose a date.';
    if (new Date(endOfDay(date)).getTime() <= Date.now()) return 'The date must be in the future.';
    return null;
  }

  // ---------------------------------------------------------------- views and routing

  function showView(name) {
    state.view = name;
    for (const v of ['signin', 'list', 'details']) $(`view-${v}`).hidden = v !== name;
  }

  function route() {
    closeMenu();
    if (!state.key) {
      showView('signin');
      $('signin-key').focus();
      return;
    }
    const m = /^#\/tokens\/(SU-\d{3}-\d{3}-\d{3})(?:\/(general|statistics|permissions|edit))?$/.exec(location.hash);
    if (m) {
      openDetails(m[1], m[2] || 'general');
      return;
    }
    if (location.hash !== '#/tokens') history.replaceState(null, '', '#/tokens');
    const from = state.view;
    showView('list');
    loadList();
    if (from === 'details') $('list-title').setAttribute('tabindex', '-1');
    if (from === 'details') $('list-title').focus();
  }

  // ---------------------------------------------------------------- sign-in

  async function loadCatalogue() {
    const [ext, mods] = await Promise.all([api('GET', '/v1/extensions'), api('GET', '/v1/modules')]);
    state.extensions = Array.isArray(ext.data) ? ext.data : [];
    state.modules = Array.isArray(mods.data) ? mods.data : [];
    const sel = $('f-extension');
    sel.replaceChildren(h('option', { value: '', text: 'All' }));
    for (const e of state.extensions) sel.append(h('option', { value: e.name, text: extLabel(e.name) }));
    sel.value = state.list.extension;
  }

  function enterSignedIn() {
    $('whoami').textContent = state.key.split(':')[0];
    $('session').hidden = false;
  }

  async function signIn(ev) {
    ev.preventDefault();
    const err = $('signin-error');
    hideError(err);
    const key = $('signin-key').value.trim().replace(/^ApiKey\s+/i, '');
    if (!key) {
      showErrorIn(err, 'Paste the admin API key.');
      return;
    }
    // Header values must be visible ASCII; catch it here rather than as a fetch TypeError.
    if (!/^[\x21-\x7e]{1,512}$/.test(key) || !key.includes(':')) {
      showErrorIn(err, 'That does not look like an API key: it is <id>:<secret>, e.g. SU-123-456-789:0123abcd….');
      return;
    }
    const btn = $('signin-submit');
    btn.disabled = true;
    state.key = key;
    try {
      await loadCatalogue();
    } catch (e) {
      state.key = null;
      btn.disabled = false;
      showErrorIn(err, e);
      $('signin-key').focus();
      return;
    }
    btn.disabled = false;
    sessionStorage.setItem(KEY_STORAGE, key);
    $('signin-key').value = '';
    hideBanner();
    enterSignedIn();
    // Setting a different hash routes through `hashchange`; the same one does not.
    if (location.hash === '#/tokens') route();
    else location.hash = '#/tokens';
  }

  function signOut() {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    state.token = null;
    state.modules = [];
    state.extensions = [];
    for (const d of document.querySelectorAll('dialog')) if (d.open) d.close();
    // Keys shown once must not linger in the page.
    $('w-key').value = '';
    $('rotate-key').value = '';
    $('tokens-body').replaceChildren();
    $('session').hidden = true;
    hideBanner();
    history.replaceState(null, '', location.pathname);
    route();
  }

  // ---------------------------------------------------------------- tokens list

  function parseRange(header) {
    if (!header) return null;
    let m = /^items (\d+)-(\d+)\/(\d+)$/.exec(header.trim());
    if (m) return { first: +m[1], last: +m[2], total: +m[3] };
    m = /^items \*\/(\d+)$/.exec(header.trim());
    if (m) return { first: null, last: null, total: +m[1] };
    return null;
  }

  async function loadList() {
    const l = state.list;
    const seq = ++l.seq;
    const q = new URLSearchParams({ limit: String(l.limit), offset: String(l.offset) });
    if (l.status) q.set('status', l.status);
    if (l.extension) q.set('extension', l.extension);
    if (l.search) q.set('search', l.search);
    $('tokens-loading').hidden = false;
    let r;
    try {
      r = await api('GET', `/v1/tokens?${q}`);
    } catch (e) {
      if (seq !== l.seq) return;
      $('tokens-loading').hidden = true;
      showBanner(e);
      return;
    }
    if (seq !== l.seq) return;
    $('tokens-loading').hidden = true;
    const tokens = Array.isArray(r.data) ? r.data : [];
    const range = parseRange(r.headers.get('Content-Range'));
    l.total = range ? range.total : l.offset + tokens.length;
    // A page past the end (after deletes): step back to the last page.
    if (!tokens.length && l.offset > 0 && l.total > 0) {
      l.offset = Math.max(0, Math.floor((l.total - 1) / l.limit) * l.limit);
      loadList();
      return;
    }
    renderList(tokens, range);
  }

  function renderList(tokens, range) {
    const l = state.list;
    const body = $('tokens-body');
    body.replaceChildren(...tokens.map(tokenRow));
    $('tokens-empty').hidden = tokens.length > 0;
    if (tokens.length) {
      const first = range && range.first !== null ? range.first : l.offset;
      const last = range && range.last !== null ? range.last : l.offset + tokens.length - 1;
      $('page-range').textContent = `${first + 1}–${last + 1} of ${l.total}`;
    } else {
      $('page-range').textContent = `0 of ${l.total}`;
    }
    $('page-prev').disabled = l.offset === 0;
    $('page-next').disabled = l.offset + tokens.length >= l.total;
    if (state.focusAfterList) {
      const target = body.querySelector(`button[data-menu="${state.focusAfterList}"]`) || $('create-btn');
      state.focusAfterList = null;
      target.focus();
    }
  }

  function tokenRow(t) {
    return h(
      'tr',
      { 'data-id': t.id },
      h(
        'td',
        { class: 'name', 'data-label': 'Name' },
        h('a', { href: `#/tokens/${t.id}`, text: t.name }),
        h('span', { class: 'sub' }, h('code', { text: t.id })),
        t.external_id ? h('span', { class: 'sub', text: `External ID: ${t.external_id}` }) : null,
      ),
      h('td', { 'data-label': 'Extension' }, extLabel(t.extension)),
      h('td', { 'data-label': 'Permissions', title: t.permissions.join(', ') }, permsLabel(t.permissions)),
      h(
        'td',
        { 'data-label': 'Created' },
        fmtTime(t.created_at),
        t.created_by ? h('span', { class: 'sub', text: `by ${t.created_by}` }) : null,
      ),
      h('td', { 'data-label': 'Status' }, badge(t.status)),
      h('td', { class: 'actions-cell' }, menuFor(t)),
    );
  }

  // ---------------------------------------------------------------- the ⋮ menu

  let openMenuState = null;

  /** The ⋮ button and its menu for token `t`. */
  function menuFor(t) {
    const wrap = h('span', { class: 'menu-wrap' });
    const btn = h('button', {
      type: 'button',
      class: 'btn ghost icon',
      'aria-haspopup': 'menu',
      'aria-expanded': 'false',
      'aria-label': `Actions for ${t.name}`,
      'data-menu': t.id,
      text: '⋮',
    });
    btn.addEventListener('click', (ev) => {
      ev.stopPropagation();
      if (openMenuState && openMenuState.btn === btn) closeMenu(true);
      else openMenu(wrap, btn, t);
    });
    btn.addEventListener('keydown', (ev) => {
      if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
        ev.preventDefault();
        openMenu(wrap, btn, t, ev.key === 'ArrowUp' ? -1 : 0);
      }
    });
    wrap.append(btn);
    return wrap;
  }

  function openMenu(wrap, btn, t, focusIndex = 0) {
    closeMenu();
    const item = (text, action, cls) =>
      h('button', {
        type: 'button',
        role: 'menuitem',
        tabindex: '-1',
        class: cls || null,
        text,
        onclick: (ev) => {
          ev.stopPropagation();
          closeMenu();
          action();
        },
      });
    const disabled = t.status === 'disabled';
    const items = [
      item(disabled ? 'Enable' : 'Disable', () => setEnabled(t, disabled, btn)),
      item('Rotate key…', () => openRotate(t, btn)),
      t.expires_at ? item('Renew…', () => openRenew(t, btn)) : null,
      item('Delete…', () => openDelete(t, btn), 'danger'),
    ].filter(Boolean);
    const menu = h('div', { class: 'menu', role: 'menu', 'aria-label': `Actions for ${t.name}` }, items);
    menu.addEventListener('keydown', (ev) => {
      const i = items.indexOf(document.activeElement);
      let next = null;
      if (ev.key === 'ArrowDown') next = (i + 1) % items.length;
      else if (ev.key === 'ArrowUp') next = (i - 1 + items.length) % items.length;
      else if (ev.key === 'Home') next = 0;
      else if (ev.key === 'End') next = items.length - 1;
      else if (ev.key === 'Escape') {
        ev.preventDefault();
        ev.stopPropagation();
        closeMenu(true);
        return;
      } else if (ev.key === 'Tab') {
        closeMenu();
        return;
      }
      if (next !== null) {
        ev.preventDefault();
        items[next].focus();
      }
    });
    wrap.append(menu);
    btn.setAttribute('aria-expanded', 'true');
    openMenuState = { menu, btn };
    items[focusIndex < 0 ? items.length - 1 : focusIndex].focus();
  }

  function closeMenu(refocus) {
    if (!openMenuState) return;
    const { menu, btn } = openMenuState;
    openMenuState = null;
    menu.remove();
    btn.setAttribute('aria-expanded', 'false');
    if (refocus) btn.focus();
  }

  /** After an action on token `id`: refresh what is on screen. `token` is the new state or null (deleted). */
  function afterChange(id, token) {
    if (state.view === 'details' && state.token && state.token.id === id) {
      if (token) {
        state.token = token;
        renderDetails();
        $('d-menu-wrap').querySelector('button').focus();
      } else {
        state.token = null;
        location.hash = '#/tokens';
      }
    } else if (state.view === 'list') {
      state.focusAfterList = token ? id : null;
      loadList();
    }
  }

  async function setEnabled(t, enable, btn) {
    try {
      const r = await api('POST', `/v1/tokens/${enc(t.id)}/${enable ? 'enable' : 'disable'}`);
      toast(`${t.name} (${t.id}) ${enable ? 'enabled' : 'disabled'}.`);
      afterChange(t.id, r.data);
    } catch (e) {
      showBanner(e);
      btn.focus();
    }
  }

  // ---------------------------------------------------------------- dialogs

  function openDialog(dlg, opener) {
    dlg.opener = opener || document.activeElement;
    dlg.showModal();
  }

  function wireDialogs() {
    for (const dlg of document.querySelectorAll('dialog')) {
      for (const b of dlg.querySelectorAll('[data-close]')) b.addEventListener('click', () => dlg.close());
      dlg.addEventListener('close', () => {
        const o = dlg.opener;
        dlg.opener = null;
        if (o && o.isConnected && !o.closest('[hidden]')) o.focus();
        else $('main').focus();
      });
    }
  }

  // Delete
  let confirmAction = null;

  function openDelete(t, opener) {
    $('confirm-title').textContent = 'Delete token';
    $('confirm-text').replaceChildren(
      'Delete ',
      h('strong', { text: t.name }),
      ' (',
      h('code', { text: t.id }),
      ')? Clients using its key are refused at once. This cannot be undone; the id is never reused.',
    );
    $('confirm-ok').textContent = 'Delete';
    hideError($('confirm-error'));
    confirmAction = async () => {
      await api('DELETE', `/v1/tokens/${enc(t.id)}`);
      toast(`${t.name} (${t.id}) deleted.`);
      afterChange(t.id, null);
    };
    openDialog($('dlg-confirm'), opener);
    $('confirm-ok').focus();
  }

  async function submitConfirm(ev) {
    ev.preventDefault();
    if (!confirmAction) return;
    const btn = $('confirm-ok');
    btn.disabled = true;
    try {
      await confirmAction();
      confirmAction = null;
      $('dlg-confirm').close();
    } catch (e) {
      showErrorIn($('confirm-error'), e);
    } finally {
      btn.disabled = false;
    }
  }

  // Rotate
  let rotating = null;

  function openRotate(t, opener) {
    rotating = { token: t, done: null };
    $('rotate-name').textContent = `${t.name} (${t.id})`;
    $('rotate-grace').value = '0s';
    $('rotate-ask').hidden = false;
    $('rotate-done').hidden = true;
    $('rotate-key').value = '';
    $('rotate-ok').hidden = false;
    $('rotate-ok').textContent = 'Rotate';
    $('rotate-cancel').textContent = 'Cancel';
    hideError($('rotate-error'));
    openDialog($('dlg-rotate'), opener);
    $('rotate-grace').focus();
  }

  async function submitRotate(ev) {
    ev.preventDefault();
    if (!rotating || rotating.done) return;
    const t = rotating.token;
    const btn = $('rotate-ok');
    btn.disabled = true;
    try {
      const r = await api('POST', `/v1/tokens/${enc(t.id)}/rotate`, { grace_period: $('rotate-grace').value });
      rotating.done = r.data;
      $('rotate-key').value = r.data.api_key || '';
      $('rotate-ask').hidden = true;
      $('rotate-done').hidden = false;
      btn.hidden = true;
      $('rotate-cancel').textContent = 'Close';
      hideError($('rotate-error'));
      $('rotate-copy').focus();
    } catch (e) {
      showErrorIn($('rotate-error'), e);
    } finally {
      btn.disabled = false;
    }
  }

  function closedRotate() {
    $('rotate-key').value = '';
    if (rotating && rotating.done) {
      const { token, done } = rotating;
      const view = { ...done };
      delete view.api_key;
      toast(`New key issued for ${token.name} (${token.id}).`);
      afterChange(token.id, view);
    }
    rotating = null;
  }

  // Renew
  let renewing = null;

  function openRenew(t, opener) {
    renewing = t;
    $('renew-name').textContent = `${t.name} (${t.id})`;
    $('renew-current').textContent = t.expires_at ? fmtExpiry(t) : 'perpetual';
    $('renew-choice').value = 'same';
    $('renew-date').hidden = true;
    $('renew-date').value = '';
    $('renew-date').min = todayUtc();
    hideError($('renew-error'));
    openDialog($('dlg-renew'), opener);
    $('renew-choice').focus();
  }

  async function submitRenew(ev) {
    ev.preventDefault();
    if (!renewing) return;
    const t = renewing;
    const choice = $('renew-choice').value;
    let body;
    if (choice === 'custom') {
      const bad = checkDate($('renew-date').value);
      if (bad) {
        showErrorIn($('renew-error'), bad);
        $('renew-date').focus();
        return;
      }
      body = { expires_at: endOfDay($('renew-date').value) };
    } else if (choice !== 'same') {
      body = { expires_in: choice };
    }
    try {
      const r = await api('POST', `/v1/tokens/${enc(t.id)}/renew`, body);
      renewing = null;
      $('dlg-renew').close();
      toast(`${t.name} (${t.id}) renewed until ${fmtTime(r.data.expires_at)}.`);
      afterChange(t.id, r.data);
    } catch (e) {
      showErrorIn($('renew-error'), e);
    }
  }

  // ---------------------------------------------------------------- permissions checklist

  /** A "Full access / Read only" choice for one row of the checklist. */
  function levelSelect(id, value, label) {
    const sel = h('select', { id, class: 'level', 'aria-label': label },
      h('option', { value: 'full', text: 'Full access' }),
      h('option', { value: 'read', text: 'Read only' }));
    sel.value = value;
    return sel;
  }

  /**
   * Fills `box` with the "All modules" row and one row per module, each a checkbox and
   * an access level (full, or read only: GET, HEAD and OPTIONS); `selected` is a
   * permission list such as ["agreements:read", "billing"] or ["all:read", "billing"].
   */
  function fillPermissions(box, selected, idPrefix) {
    const all = selected.includes('all');
    const allRead = selected.includes('all:read');
    const allBox = h('input', { type: 'checkbox', value: 'all', id: `${idPrefix}-all` });
    allBox.checked = all || allRead;
    const allLevel = levelSelect(`${idPrefix}-all-level`, allRead ? 'read' : 'full', 'Access to all modules');
    const rows = [];
    const items = permissionChoices().map((m) => {
      const cb = h('input', { type: 'checkbox', value: m.name, id: `${idPrefix}-${m.name}` });
      const held = selected.includes(m.name) ? 'full' : selected.includes(`${m.name}:read`) ? 'read' : null;
      cb.checked = all || held !== null;
      const lvl = levelSelect(`${idPrefix}-${m.name}-level`, held || 'full', `Access to ${m.name}`);
      rows.push([cb, lvl]);
      cb.addEventListener('change', () => { lvl.disabled = !cb.checked || cb.disabled; });
      return h('div', { class: 'perm-row' },
        h('label', { for: cb.id }, cb, h('span', {}, m.name, m.description ? h('span', { class: 'desc', text: m.description }) : null)),
        lvl);
    });
    const sync = () => {
      // Full access to all modules covers every row; read-only all leaves rows free
      // for full access to some modules.
      const everything = allBox.checked && allLevel.value === 'full';
      allLevel.disabled = !allBox.checked;
      for (const [cb, lvl] of rows) {
        cb.disabled = everything;
        if (everything) cb.checked = true;
        lvl.disabled = everything || !cb.checked;
      }
    };
    allBox.addEventListener('change', sync);
    allLevel.addEventListener('change', sync);
    box.replaceChildren(
      h('div', { class: 'perm-row all' },
        h('label', { class: 'all', for: allBox.id }, allBox, h('span', {}, 'All modules', h('span', { class: 'desc', text: 'Every module, including modules added later' }))),
        allLevel),
      ...items,
    );
    sync();
  }

  /** The permission list the checklist stands for. */
  function readPermissions(box) {
    const allBox = box.querySelector('input[value=all]');
    const allLevel = box.querySelector('select.level');
    if (allBox && allBox.checked && allLevel.value === 'full') return ['all'];
    const out = allBox && allBox.checked ? ['all:read'] : [];
    for (const row of box.querySelectorAll('.perm-row:not(.all)')) {
      const cb = row.querySelector('input[type=checkbox]');
      const lvl = row.querySelector('select.level');
      if (!cb.checked) continue;
      // Read access is already given by "all:read".
      if (lvl.value === 'read' && out.length && out[0] === 'all:read') continue;
      out.push(lvl.value === 'read' ? `${cb.value}:read` : cb.value);
    }
    return out;
  }

  /** What a permission list gives to module `name`: 'full', 'read' or null. */
  function accessTo(perms, name) {
    if (perms.includes('all') || perms.includes(name)) return 'full';
    if (perms.includes('all:read') || perms.includes(`${name}:read`)) return 'read';
    return null;
  }

  // ---------------------------------------------------------------- usage policies

  /** Parses "100/1m, 10/1s" into rate limits; throws a message naming the entry. */
  function parseRateLimits(text) {
    const out = [];
    for (const part of text.split(',').map((x) => x.trim()).filter(Boolean)) {
      const m = /^(\d+)\s*\/\s*(\d+[smhd])$/.exec(part);
      if (!m) throw new Error(`Rate limit "${part}": write requests/period, e.g. 100/1m.`);
      out.push({ requests: Number(m[1]), per: m[2] });
    }
    if (out.length > 4) throw new Error('At most 4 rate limits.');
    return out;
  }

  /** Parses "100000/month" into a quota (null when empty). */
  function parseQuota(text) {
    const t = text.trim();
    if (!t) return null;
    const m = /^(\d+)\s*\/\s*(day|month)$/.exec(t);
    if (!m) throw new Error(`Quota "${t}": write requests/day or requests/month, e.g. 100000/month.`);
    return { requests: Number(m[1]), period: m[2] };
  }

  function parseIps(text) {
    return text.split(',').map((x) => x.trim()).filter(Boolean);
  }

  function rateLimitsText(t) {
    return (t.rate_limits || []).map((l) => `${l.requests}/${l.per}`).join(', ');
  }

  function quotaText(t) {
    return t.quota ? `${t.quota.requests}/${t.quota.period}` : '';
  }

  /** The quota's use this period as a bar and a sentence. */
  function quotaUse(t) {
    if (!t.quota) return 'None';
    const u = t.quota_usage || { used: 0 };
    const meter = h('meter', { class: 'quota', min: '0', max: String(t.quota.requests), value: String(Math.min(u.used, t.quota.requests)), high: String(t.quota.requests * 0.9), 'aria-label': 'Quota used' });
    const until = u.period_end ? ` (resets ${fmtTime(u.period_end)})` : '';
    return h('span', { class: 'quota-use' }, meter, `${num(u.used)} of ${num(t.quota.requests)} this ${t.quota.period}${until}`);
  }

  /** The preset permissions of extension `name`, or null. */
  function presetOf(name) {
    const e = extension(name);
    return e && Array.isArray(e.permissions) ? e.permissions : null;
  }

  function checkGeneral(name, external, description) {
    if (!name) return ['name', 'Enter a name.'];
    if ([...name].length > 128) return ['name', 'The name is at most 128 characters.'];
    if (external && !/^[\x21-\x7e]{1,64}$/.test(external)) return ['external', 'The external ID is 1–64 printable ASCII characters without spaces.'];
    if ([...description].length > 1024) return ['description', 'The description is at most 1024 characters.'];
    return null;
  }

  // ---------------------------------------------------------------- create wizard

  const wiz = { step: 1, created: null, busy: false };

  function openWizard() {
    wiz.step = 1;
    wiz.created = null;
    $('wizard-form').reset();
    $('w-key').value = '';
    $('w-date').min = todayUtc();
    $('w-date-field').hidden = true;
    const exts = $('w-extensions');
    exts.replaceChildren(
      ...state.extensions.map((e) => {
        const r = h('input', { type: 'radio', name: 'w-extension', value: e.name });
        r.checked = e.name === 'custom';
        return h('label', { class: 'choice' }, r, h('span', {}, h('strong', { text: extLabel(e.name) }), e.description ? h('span', { class: 'desc', text: e.description }) : null));
      }),
    );
    if (!exts.querySelector('input:checked') && exts.querySelector('input')) exts.querySelector('input').checked = true;
    fillPermissions($('w-perms'), [], 'wp');
    hideError($('wiz-error'));
    showStep(1);
    openDialog($('dlg-wizard'), $('create-btn'));
    $('w-name').focus();
  }

  function showStep(n) {
    wiz.step = n;
    for (const el of document.querySelectorAll('#wizard-form .step')) el.hidden = +el.dataset.step !== n;
    for (const li of document.querySelectorAll('#wiz-steps li')) {
      const k = +li.dataset.step;
      li.className = k === n ? 'current' : k < n ? 'done' : '';
      if (k === n) li.setAttribute('aria-current', 'step');
      else li.removeAttribute('aria-current');
    }
    $('wiz-back').hidden = n === 1 || n === 5;
    $('wiz-next').hidden = n === 5;
    $('wiz-next').textContent = n === 4 ? 'Create' : 'Next';
    $('wiz-details').hidden = n !== 5;
    $('wiz-close').textContent = n === 5 ? 'Close' : 'Cancel';
    $('wiz-title').textContent = n === 5 ? 'Token created' : 'Create token';
  }

  function focusStep(n) {
    const first = document.querySelector(`#wizard-form .step[data-step="${n}"] input:not([disabled]), #wizard-form .step[data-step="${n}"] textarea`);
    if (n === 2 || n === 3) {
      const checked = document.querySelector(`#wizard-form .step[data-step="${n}"] input:checked`);
      if (checked) {
        checked.focus();
        return;
      }
    }
    if (first) first.focus();
  }

  /** The preset permissions of the extension chosen in the wizard, or null. */
  function wizardPreset() {
    const ext = document.querySelector('input[name=w-extension]:checked');
    return ext ? presetOf(ext.value) : null;
  }

  /** Step 4 shows an extension's preset instead of asking (SPEC §8). */
  function showPreset(box, note, preset, extName) {
    note.hidden = !preset;
    box.hidden = !!preset;
    if (preset) note.textContent = `The ${extLabel(extName)} extension sets the permissions of its tokens: ${preset.join(', ')}.`;
  }

  function wizardExpiry() {
    const v = (document.querySelector('input[name=w-expiry]:checked') || {}).value || '30d';
    return v;
  }

  function validateStep(n) {
    if (n === 1) {
      const bad = checkGeneral($('w-name').value.trim(), $('w-external').value.trim(), $('w-description').value);
      return bad ? [$(`w-${bad[0]}`), bad[1]] : null;
    }
    if (n === 2 && wizardExpiry() === 'custom') {
      const bad = checkDate($('w-date').value);
      return bad ? [$('w-date'), bad] : null;
    }
    if (n === 3 && !document.querySelector('input[name=w-extension]:checked')) {
      return [null, 'Choose an extension.'];
    }
    if (n === 4 && !wizardPreset() && readPermissions($('w-perms')).length === 0) {
      return [$('w-perms').querySelector('input'), 'Choose at least one module, or All modules.'];
    }
    if (n === 4) {
      try {
        parseRateLimits($('w-rate').value);
        parseQuota($('w-quota').value);
      } catch (e) {
        return [$('w-rate'), e.message];
      }
    }
    return null;
  }

  async function submitWizard(ev) {
    ev.preventDefault();
    if (wiz.busy || wiz.step === 5) return;
    const bad = validateStep(wiz.step);
    if (bad) {
      showErrorIn($('wiz-error'), bad[1]);
      if (bad[0]) bad[0].focus();
      return;
    }
    hideError($('wiz-error'));
    if (wiz.step < 4) {
      showStep(wiz.step + 1);
      if (wiz.step === 4) {
        const ext = document.querySelector('input[name=w-extension]:checked').value;
        showPreset($('w-perms'), $('w-preset'), wizardPreset(), ext);
      }
      focusStep(wiz.step);
      return;
    }
    const body = {
      name: $('w-name').value.trim(),
      description: $('w-description').value,
      extension: document.querySelector('input[name=w-extension]:checked').value,
    };
    if (!wizardPreset()) body.permissions = readPermissions($('w-perms'));
    const limits = parseRateLimits($('w-rate').value);
    if (limits.length) body.rate_limits = limits;
    const quota = parseQuota($('w-quota').value);
    if (quota) body.quota = quota;
    const ips = parseIps($('w-ips').value);
    if (ips.length) body.allowed_ips = ips;
    const external = $('w-external').value.trim();
    if (external) body.external_id = external;
    const exp = wizardExpiry();
    if (exp === 'custom') body.expires_at = endOfDay($('w-date').value);
    else if (exp !== 'perpetual') body.expires_in = exp;
    wiz.busy = true;
    $('wiz-next').disabled = true;
    try {
      const r = await api('POST', '/v1/tokens', body);
      wiz.created = r.data;
      $('w-key').value = r.data.api_key || '';
      const t = r.data;
      $('w-summary').replaceChildren(
        ...kv([
          ['Name', t.name],
          ['ID', h('code', { text: t.id })],
          ['External ID', t.external_id || '—'],
          ['Description', t.description || '—'],
          ['Expires', fmtExpiry(t)],
          ['Extension', extLabel(t.extension)],
          ['Permissions', t.permissions.join(', ')],
          ['Rate limits', rateLimitsText(t) || 'None'],
          ['Quota', quotaText(t) || 'None'],
          ['Allowed addresses', (t.allowed_ips || []).join(', ') || 'Any'],
          ['Status', badge(t.status)],
        ]),
      );
      showStep(5);
      $('w-copy').focus();
    } catch (e) {
      showErrorIn($('wiz-error'), e);
    } finally {
      wiz.busy = false;
      $('wiz-next').disabled = false;
    }
  }

  function closedWizard() {
    $('w-key').value = '';
    // Focus returns to the opener (the dialog's close handler); the list shows the new row.
    if (wiz.created && state.view === 'list') loadList();
  }

  function kv(rows) {
    return rows.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]);
  }

  async function copyKey(input, btn) {
    input.focus();
    input.select();
    let ok = false;
    try {
      await navigator.clipboard.writeText(input.value);
      ok = true;
    } catch {
      try {
        ok = document.execCommand('copy');
      } catch {
        ok = false;
      }
    }
    btn.textContent = ok ? 'Copied' : 'Press Ctrl+C';
    setTimeout(() => {
      btn.textContent = 'Copy';
    }, 2500);
  }

  // ---------------------------------------------------------------- token details

  async function openDetails(id, tab) {
    if (state.view === 'details' && state.token && state.token.id === id) {
      selectTab(tab);
      return;
    }
    showView('details');
    $('d-name').textContent = 'Loading…';
    state.stats = null;
    for (const id2 of ['stats-totals', 'stats-chart', 'stats-table']) $(id2).replaceChildren();
    for (const p of ['general', 'statistics', 'permissions', 'edit']) $(`panel-${p}`).hidden = true;
    let r;
    try {
      r = await api('GET', `/v1/tokens/${enc(id)}`);
    } catch (e) {
      $('d-name').textContent = id;
      state.token = null;
      showBanner(e);
      return;
    }
    hideBanner();
    state.token = r.data;
    renderDetails();
    selectTab(tab);
    $('d-name').focus();
  }

  function renderDetails() {
    const t = state.token;
    $('d-name').textContent = t.name;
    $('d-status').replaceChildren(badge(t.status));
    $('d-id').textContent = t.id;
    $('d-extension').textContent = extLabel(t.extension);
    $('d-expiry').textContent = fmtExpiry(t);
    $('d-menu-wrap').replaceChildren(menuFor(t));
    const ext = extension(t.extension);
    $('general-list').replaceChildren(
      ...kv([
        ['Description', t.description || '—'],
        ['External ID', t.external_id || '—'],
        ['Extension', ext.description ? `${extLabel(t.extension)} — ${ext.description}` : extLabel(t.extension)],
        ['Status', badge(t.status)],
        ['Expires', fmtExpiry(t)],
        ['Created', t.created_by ? `${fmtTime(t.created_at)} by ${t.created_by}` : fmtTime(t.created_at)],
        ['Updated', fmtTime(t.updated_at)],
        ['Last used', t.last_used_at ? fmtTime(t.last_used_at) : 'Never'],
        ['Permissions', t.permissions.join(', ')],
        ['Rate limits', rateLimitsText(t) || 'None'],
        ['Quota', quotaUse(t)],
        ['Allowed addresses', (t.allowed_ips || []).join(', ') || 'Any'],
      ]),
    );
    const label = { full: 'Full access', read: 'Read only' };
    const row = (name, access) => h('tr', {}, h('td', { text: name }), h('td', {}, h('span', { class: `badge ${access ? 'enabled' : 'off'}`, text: access ? label[access] : 'No access' })));
    const names = permissionChoices().map((m) => m.name);
    // Names the token holds that the configuration no longer has still show.
    for (const p of t.permissions) {
      const n = p.replace(/:read$/, '');
      if (n !== 'all' && !names.includes(n)) names.push(n);
    }
    const allAccess = t.permissions.includes('all') ? 'full' : t.permissions.includes('all:read') ? 'read' : null;
    $('perms-body').replaceChildren(row('All', allAccess), ...names.map((n) => row(n, accessTo(t.permissions, n))));
    if (state.tab === 'edit') fillEdit();
  }

  const TABS = ['general', 'statistics', 'permissions', 'edit'];

  function selectTab(tab, focus) {
    state.tab = tab;
    for (const name of TABS) {
      const b = $(`tab-${name}`);
      const on = name === tab;
      b.setAttribute('aria-selected', on ? 'true' : 'false');
      b.tabIndex = on ? 0 : -1;
      $(`panel-${name}`).hidden = !on;
    }
    if (state.token) history.replaceState(null, '', `#/tokens/${state.token.id}${tab === 'general' ? '' : `/${tab}`}`);
    if (tab === 'statistics') loadStats();
    if (tab === 'edit') fillEdit();
    if (focus) $(`tab-${tab}`).focus();
  }

  function tabKeys(ev) {
    const i = TABS.indexOf(state.tab);
    let n = null;
    if (ev.key === 'ArrowRight') n = (i + 1) % TABS.length;
    else if (ev.key === 'ArrowLeft') n = (i - 1 + TABS.length) % TABS.length;
    else if (ev.key === 'Home') n = 0;
    else if (ev.key === 'End') n = TABS.length - 1;
    if (n !== null) {
      ev.preventDefault();
      selectTab(TABS[n], true);
    }
  }

  // ---------------------------------------------------------------- statistics

  let statsSeq = 0;

  async function loadStats() {
    const t = state.token;
    if (!t) return;
    const seq = ++statsSeq;
    hideError($('stats-error'));
    $('stats-refresh').disabled = true;
    try {
      const r = await api('GET', `/v1/tokens/${enc(t.id)}/stats`);
      if (seq !== statsSeq) return;
      renderStats(r.data);
    } catch (e) {
      if (seq !== statsSeq) return;
      $('stats-totals').replaceChildren();
      $('stats-chart').replaceChildren();
      $('stats-table').replaceChildren();
      state.stats = null;
      showErrorIn($('stats-error'), e);
    } finally {
      if (seq === statsSeq) $('stats-refresh').disabled = false;
    }
  }

  function num(v) {
    return Number.isFinite(+v) ? +v : 0;
  }

  function renderStats(data) {
    const days = Array.isArray(data && data.days) ? data.days : [];
    const totals = {};
    for (const c of CLASSES) {
      totals[c] = data && data.totals && c in data.totals ? num(data.totals[c]) : days.reduce((a, d) => a + num(d[c]), 0);
    }
    const all = CLASSES.reduce((a, c) => a + totals[c], 0);
    $('stats-days-label').textContent = String(days.length || STATS_DAYS);
    const card = (cls, label, n) => h('div', { class: `total ${cls}`, 'data-class': label }, h('span', { class: 'n', text: n.toLocaleString('en-US') }), h('span', { class: 'l', text: label }));
    $('stats-totals').replaceChildren(card('', 'Total', all), ...CLASSES.map((c) => card(`c${c}`, c, totals[c])));
    state.stats = { days, all };
    drawChart();
    const rows = days.map((d) => h('tr', {}, h('td', { text: d.date }), CLASSES.map((c) => h('td', { text: num(d[c]) })), h('td', { text: CLASSES.reduce((a, c) => a + num(d[c]), 0) })));
    $('stats-table').replaceChildren(
      h('table', {}, h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Day' }), CLASSES.map((c) => h('th', { scope: 'col', text: c })), h('th', { scope: 'col', text: 'Total' }))), h('tbody', {}, rows)),
    );
  }

  /** 1, 2 or 5 times a power of ten, at least `x`. */
  function niceStep(x) {
    if (x <= 1) return 1;
    const p = 10 ** Math.floor(Math.log10(x));
    for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
    return 10 * p;
  }

  /** Draws the last statistics at the container's width, so labels keep their size. */
  function drawChart() {
    const box = $('stats-chart');
    if (!state.stats) return;
    const width = Math.max(300, Math.round(box.clientWidth || 720));
    box.replaceChildren(chart(state.stats.days, state.stats.all, width));
  }

  /** A stacked bar per day (2xx at the bottom), drawn as SVG `W` units wide. */
  function chart(days, total, W) {
    const H = 240;
    const L = 46;
    const R = 8;
    const T = 10;
    const B = 30;
    const pw = W - L - R;
    const ph = H - T - B;
    const sums = days.map((d) => CLASSES.reduce((a, c) => a + num(d[c]), 0));
    const step = niceStep(Math.max(...sums, 0) / 4);
    const max = step * 4;
    const y = (v) => T + ph - (v / max) * ph;
    const svg = s('svg', {
      viewBox: `0 0 ${W} ${H}`,
      role: 'img',
      'aria-label': `Requests per day over the last ${days.length} days, ${total} in total, stacked by class 2xx, 3xx, 4xx, 5xx`,
    });
    for (let i = 0; i <= 4; i++) {
      const v = step * i;
      svg.append(
        s('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }),
        s('text', { class: 'axis', x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, v.toLocaleString('en-US')),
      );
    }
    const n = Math.max(days.length, 1);
    const bw = pw / n;
    days.forEach((d, i) => {
      const x = L + i * bw;
      const g = s('g', {});
      let base = 0;
      for (const c of CLASSES) {
        const v = num(d[c]);
        if (v <= 0) continue;
        const top = y(base + v);
        g.append(s('rect', { class: `c${c}`, x: x + bw * 0.15, width: bw * 0.7, y: top, height: Math.max(y(base) - top, 0.5) }));
        base += v;
      }
      const tip = `${d.date}: ${CLASSES.map((c) => `${c} ${num(d[c])}`).join(', ')}`;
      g.append(s('rect', { class: 'hit', x, width: bw, y: T, height: ph }, s('title', {}, tip)));
      if ((days.length - 1 - i) % 5 === 0) {
        // The last label ends at the plot's edge so narrow charts do not clip it.
        const last = i === days.length - 1;
        g.append(s('text', { class: 'axis', x: last ? L + pw : x + bw / 2, y: H - 10, 'text-anchor': last ? 'end' : 'middle' }, String(d.date).slice(5)));
      }
      svg.append(g);
    });
    if (total === 0) {
      svg.append(s('text', { class: 'axis', x: L + pw / 2, y: T + ph / 2, 'text-anchor': 'middle' }, 'No requests in this period'));
    }
    return svg;
  }

  // ---------------------------------------------------------------- edit

  function fillEdit() {
    const t = state.token;
    if (!t) return;
    $('e-name').value = t.name;
    $('e-external').value = t.external_id || '';
    $('e-description').value = t.description || '';
    const sel = $('e-extension');
    sel.replaceChildren(...state.extensions.map((e) => h('option', { value: e.name, text: extLabel(e.name) })));
    if (!state.extensions.some((e) => e.name === t.extension)) sel.append(h('option', { value: t.extension, text: t.extension }));
    sel.value = t.extension;
    $('e-expiry').value = 'keep';
    $('e-expiry').options[0].textContent = `Keep: ${t.expires_at ? fmtTime(t.expires_at) : 'perpetual'}`;
    $('e-expiry-date').hidden = true;
    $('e-expiry-date').value = '';
    $('e-expiry-date').min = todayUtc();
    fillPermissions($('e-perms'), t.permissions, 'ep');
    showPreset($('e-perms'), $('e-preset'), presetOf(t.extension), t.extension);
    $('e-rate').value = rateLimitsText(t);
    $('e-quota').value = quotaText(t);
    $('e-ips').value = (t.allowed_ips || []).join(', ');
    hideError($('edit-error'));
  }

  async function submitEdit(ev) {
    ev.preventDefault();
    const t = state.token;
    if (!t) return;
    const err = $('edit-error');
    const name = $('e-name').value.trim();
    const external = $('e-external').value.trim();
    const description = $('e-description').value;
    const bad = checkGeneral(name, external, description);
    if (bad) {
      showErrorIn(err, bad[1]);
      $(`e-${bad[0]}`).focus();
      return;
    }
    const patch = {};
    if (name !== t.name) patch.name = name;
    if (description !== (t.description || '')) patch.description = description;
    if (external !== (t.external_id || '')) patch.external_id = external || null;
    if ($('e-extension').value !== t.extension) patch.extension = $('e-extension').value;
    // An extension with preset permissions sets them itself.
    if (!presetOf($('e-extension').value)) {
      const perms = readPermissions($('e-perms'));
      if (!perms.length) {
        showErrorIn(err, 'Choose at least one module, or All modules.');
        return;
      }
      if (perms.slice().sort().join(',') !== t.permissions.slice().sort().join(',')) patch.permissions = perms;
    }
    try {
      if ($('e-rate').value.trim() !== rateLimitsText(t)) patch.rate_limits = parseRateLimits($('e-rate').value);
      if ($('e-quota').value.trim() !== quotaText(t)) patch.quota = parseQuota($('e-quota').value);
    } catch (e) {
      showErrorIn(err, e.message);
      return;
    }
    const ips = parseIps($('e-ips').value);
    if (ips.join(', ') !== (t.allowed_ips || []).join(', ')) patch.allowed_ips = ips;
    const exp = $('e-expiry').value;
    if (exp === 'custom') {
      const badDate = checkDate($('e-expiry-date').value);
      if (badDate) {
        showErrorIn(err, badDate);
        $('e-expiry-date').focus();
        return;
      }
      patch.expires_at = endOfDay($('e-expiry-date').value);
    } else if (exp === 'perpetual') {
      patch.expires_at = null;
    } else if (exp !== 'keep') {
      patch.expires_in = exp;
    }
    if (!Object.keys(patch).length) {
      toast('Nothing changed.');
      return;
    }
    try {
      const r = await api('PATCH', `/v1/tokens/${enc(t.id)}`, patch);
      state.token = r.data;
      renderDetails();
      toast(`${r.data.name} (${r.data.id}) saved.`);
      selectTab('general', true);
    } catch (e) {
      showErrorIn(err, e);
    }
  }

  // ---------------------------------------------------------------- wiring

  function editExtensionChanged() {
    const ext = $('e-extension').value;
    showPreset($('e-perms'), $('e-preset'), presetOf(ext), ext);
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  function wire() {
    wireDialogs();
    $('signin-form').addEventListener('submit', signIn);
    $('signout').addEventListener('click', signOut);
    $('banner-close').addEventListener('click', hideBanner);
    $('banner-signin').addEventListener('click', signOut);

    const l = state.list;
    const reload = () => {
      l.offset = 0;
      loadList();
    };
    const searchNow = () => {
      l.search = $('f-search').value.trim();
      reload();
    };
    $('filters').addEventListener('submit', (ev) => {
      ev.preventDefault();
      searchNow();
    });
    $('f-search').addEventListener('input', debounce(searchNow, 300));
    $('f-status').addEventListener('change', () => {
      l.status = $('f-status').value;
      reload();
    });
    $('f-extension').addEventListener('change', () => {
      l.extension = $('f-extension').value;
      reload();
    });
    $('refresh-btn').addEventListener('click', () => {
      hideBanner();
      loadList();
    });
    $('page-size').addEventListener('change', () => {
      l.limit = +$('page-size').value;
      reload();
    });
    $('page-prev').addEventListener('click', () => {
      l.offset = Math.max(0, l.offset - l.limit);
      loadList();
    });
    $('page-next').addEventListener('click', () => {
      if (l.offset + l.limit < l.total) {
        l.offset += l.limit;
        loadList();
      }
    });
    l.limit = +$('page-size').value;

    $('create-btn').addEventListener('click', openWizard);
    $('e-extension').addEventListener('change', editExtensionChanged);
    $('wizard-form').addEventListener('submit', submitWizard);
    $('wiz-back').addEventListener('click', () => {
      hideError($('wiz-error'));
      showStep(Math.max(1, wiz.step - 1));
      focusStep(wiz.step);
    });
    $('wiz-details').addEventListener('click', () => {
      const id = wiz.created && wiz.created.id;
      $('dlg-wizard').close();
      if (id) location.hash = `#/tokens/${id}`;
    });
    $('w-copy').addEventListener('click', () => copyKey($('w-key'), $('w-copy')));
    $('w-expiry').addEventListener('change', () => {
      $('w-date-field').hidden = wizardExpiry() !== 'custom';
    });
    $('dlg-wizard').addEventListener('close', closedWizard);

    $('confirm-form').addEventListener('submit', submitConfirm);
    $('rotate-form').addEventListener('submit', submitRotate);
    $('rotate-copy').addEventListener('click', () => copyKey($('rotate-key'), $('rotate-copy')));
    $('dlg-rotate').addEventListener('close', closedRotate);
    $('renew-form').addEventListener('submit', submitRenew);
    $('renew-choice').addEventListener('change', () => {
      $('renew-date').hidden = $('renew-choice').value !== 'custom';
    });

    for (const name of TABS) $(`tab-${name}`).addEventListener('click', () => selectTab(name));
    document.querySelector('.tabs').addEventListener('keydown', tabKeys);
    $('d-edit').addEventListener('click', () => selectTab('edit', true));
    $('stats-refresh').addEventListener('click', loadStats);
    $('edit-form').addEventListener('submit', submitEdit);
    $('edit-cancel').addEventListener('click', () => selectTab('general', true));
    $('e-expiry').addEventListener('change', () => {
      $('e-expiry-date').hidden = $('e-expiry').value !== 'custom';
    });

    document.addEventListener('click', (ev) => {
      if (openMenuState && !openMenuState.menu.contains(ev.target)) closeMenu();
    });
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && openMenuState) closeMenu(true);
    });
    window.addEventListener('hashchange', route);
    window.addEventListener(
      'resize',
      debounce(() => {
        if (state.view === 'details' && state.tab === 'statistics') drawChart();
      }, 150),
    );
  }

  async function boot() {
    wire();
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) {
      state.key = saved;
      try {
        await loadCatalogue();
        enterSignedIn();
      } catch (e) {
        if (e instanceof ApiError && e.isAuth) {
          sessionStorage.removeItem(KEY_STORAGE);
          state.key = null;
          showErrorIn($('signin-error'), e);
        } else {
          enterSignedIn();
          showBanner(e);
        }
      }
    }
    route();
  }

  boot();
})();
