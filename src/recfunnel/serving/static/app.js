// The funnel page: asks the REST API for one list with its whole trace and draws each stage
// as a column. Plain DOM: every text (titles come from data) goes through textContent, never
// innerHTML, so a title cannot inject markup.
"use strict";

const STAGES = ["recall", "prerank", "rank", "rerank"];
const PREVIOUS = { prerank: "recall", rank: "prerank", rerank: "rank" };
const state = {
  mode: "user",          // "user" or "visitor"
  userId: null,
  visitor: new Map(),    // movie_id -> {title, rating}
  controller: null,      // aborts a request that a newer one replaces
  users: 0,
  renders: 0,
  ready: Promise.resolve(),  // set by init: /health has filled in the defaults
};

const $ = (selector) => document.querySelector(selector);

function el(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  if (options.cls) node.className = options.cls;
  if (options.text !== undefined) node.textContent = String(options.text);
  if (options.title) node.title = options.title;
  for (const [key, value] of Object.entries(options.attrs || {})) node.setAttribute(key, value);
  for (const [key, value] of Object.entries(options.data || {})) node.dataset[key] = value;
  for (const child of children) if (child) node.appendChild(child);
  return node;
}

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function params() {
  const method = document.querySelector('input[name="method"]:checked').value;
  return new URLSearchParams({ lambda: $("#lambda").value, method });
}

async function fetchJson(url, options = {}) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(body.detail)
      ? body.detail.map((d) => d.msg).join("; ")
      : body.detail || response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

async function refresh() {
  await state.ready;  // the controls hold the run's defaults before the first request
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  let url;
  let options = { signal: controller.signal };
  if (state.mode === "user") {
    if (!state.userId) return;
    url = `/users/${encodeURIComponent(state.userId)}/recommendations?${params()}`;
  } else {
    url = `/recommendations?${params()}`;
    const ratings = [...state.visitor].map(([movie_id, r]) => ({ movie_id, rating: r.rating }));
    options = {
      ...options,
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ratings }),
    };
  }
  setStatus("asking the funnel…");
  try {
    const trace = await fetchJson(url, options);
    render(trace);
  } catch (error) {
    if (error.name !== "AbortError") setStatus(error.message, true);
  }
}

function channelBadges(channels) {
  const box = el("span", { cls: "badges" });
  for (const [name, rank] of Object.entries(channels || {})) {
    box.appendChild(el("span", { cls: `badge ch-${name}`, text: `${name} ${rank}`,
      title: `proposed by the ${name} channel at rank ${rank}` }));
  }
  return box;
}

function genreChips(genres) {
  const box = el("span", { cls: "genres" });
  for (const genre of genres || []) box.appendChild(el("span", { cls: "genre", text: genre }));
  return box;
}

function moveMark(from, to) {
  if (from === undefined || from === null) return el("span", { cls: "move", text: "" });
  const delta = from - to;
  if (delta > 0) return el("span", { cls: "move up", text: `▲${delta}`, title: `up from ${from}` });
  if (delta < 0) return el("span", { cls: "move down", text: `▼${-delta}`, title: `down from ${from}` });
  return el("span", { cls: "move same", text: "=", title: `same place ${from}` });
}

function rateButtons(movie) {
  const box = el("span", { cls: "rate", attrs: { "aria-label": `rate ${movie.title}` } });
  for (let stars = 1; stars <= 5; stars++) {
    const button = el("button", { cls: "star", text: "★", title: `rate ${stars} of 5`,
      data: { stars: String(stars) } });
    button.addEventListener("click", () => rate(movie, stars));
    box.appendChild(button);
  }
  return box;
}

function render(trace) {
  const places = {};
  for (const stage of STAGES) {
    places[stage] = new Map((trace.stages[stage] || []).map((e) => [e.movie_id, e.position]));
  }
  const latency = trace.latency_ms || {};
  for (const stage of STAGES) {
    const column = $(`#col-${stage}`);
    const list = column.querySelector(".items");
    const entries = stage === "rerank" && !trace.stages.rerank ? trace.final : trace.stages[stage] || [];
    column.querySelector(".count").textContent = entries.length ? `(${entries.length})` : "";
    const ms = stage === "prerank" ? (latency.prerank || 0) + (latency.item_to_item || 0) : latency[stage];
    column.querySelector(".ms").textContent = ms !== undefined ? `${ms.toFixed(1)} ms` : "";
    const fragment = document.createDocumentFragment();
    for (const entry of entries) {
      const movie = trace.movies[String(entry.movie_id)] || entry;
      const previous = PREVIOUS[stage] ? places[PREVIOUS[stage]].get(entry.movie_id) : undefined;
      const position = entry.position || (entry.positions && entry.positions.popularity);
      const item = el("li", { cls: "item", data: { movie: String(entry.movie_id) } }, [
        el("span", { cls: "pos", text: position }),
        moveMark(previous, position),
        el("span", { cls: "title", text: movie.title, title: `${movie.title} (movie ${entry.movie_id})` }),
        entry.score === null || entry.score === undefined ? null
          : el("span", { cls: "score", text: entry.score.toFixed(3), title: `${stage} score` }),
        stage === "recall" || stage === "rerank" ? channelBadges(movie.channels) : null,
        stage === "rerank" ? genreChips(movie.genres) : null,
        stage === "rerank" ? rateButtons(movie) : null,
      ]);
      fragment.appendChild(item);
    }
    list.replaceChildren(fragment);
  }
  $("#path").textContent = trace.path;
  $("#history").textContent = `${trace.history} (${trace.live_ratings} live)`;
  $("#ild").textContent = trace.ild === null ? "–" : trace.ild.toFixed(4);
  $("#latency").textContent = latency.total !== undefined ? `${latency.total.toFixed(1)} ms` : "–";
  const who = trace.user_id === null ? "visitor" : `user ${trace.user_id}`;
  setStatus(`${who}: ${trace.final.length} movies, ${trace.method.toUpperCase()} λ=${trace.lambda}`);
  state.renders += 1;
  document.body.dataset.renders = String(state.renders);
}

async function rate(movie, stars) {
  if (state.mode === "visitor") {
    state.visitor.set(movie.movie_id, { title: movie.title, rating: stars });
    drawVisitorRatings();
    return refresh();
  }
  try {
    await fetchJson(`/users/${encodeURIComponent(state.userId)}/ratings`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ratings: [{ movie_id: movie.movie_id, rating: stars }] }),
    });
    await refresh();
  } catch (error) {
    setStatus(error.message, true);
  }
}

function drawVisitorRatings() {
  const box = $("#visitor-ratings");
  const fragment = document.createDocumentFragment();
  for (const [movieId, r] of state.visitor) {
    const remove = el("button", { cls: "remove", text: "×", title: "forget this rating" });
    remove.addEventListener("click", () => {
      state.visitor.delete(movieId);
      drawVisitorRatings();
      refresh();
    });
    fragment.appendChild(el("span", { cls: "chip" }, [
      el("span", { text: `${r.title} ${"★".repeat(r.rating)}` }), remove,
    ]));
  }
  box.replaceChildren(fragment);
}

let searchTimer = null;
function search() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const query = $("#search").value;
    try {
      const body = await fetchJson(`/items?${new URLSearchParams({ query, limit: 12 })}`);
      const fragment = document.createDocumentFragment();
      for (const movie of body.items) {
        fragment.appendChild(el("li", { cls: "result", data: { movie: String(movie.movie_id) } }, [
          el("span", { cls: "title", text: movie.title }), genreChips(movie.genres), rateButtons(movie),
        ]));
      }
      $("#search-results").replaceChildren(fragment);
    } catch (error) {
      setStatus(error.message, true);
    }
  }, 150);
}

function setMode(mode) {
  state.mode = mode;
  $("#tab-user").classList.toggle("active", mode === "user");
  $("#tab-visitor").classList.toggle("active", mode === "visitor");
  $("#tab-user").setAttribute("aria-selected", String(mode === "user"));
  $("#tab-visitor").setAttribute("aria-selected", String(mode === "visitor"));
  $("#user-panel").hidden = mode !== "user";
  $("#visitor-panel").hidden = mode !== "visitor";
  if (mode === "visitor") search();
  refresh();
}

// Highlight one movie in every column while the pointer is on it: its path through the funnel.
function highlight(event) {
  const item = event.target.closest("[data-movie]");
  document.querySelectorAll(".item.hl").forEach((n) => n.classList.remove("hl"));
  if (!item) return;
  document.querySelectorAll(`.item[data-movie="${CSS.escape(item.dataset.movie)}"]`)
    .forEach((n) => n.classList.add("hl"));
}

let sliderTimer = null;
function init() {
  $("#tab-user").addEventListener("click", () => setMode("user"));
  $("#tab-visitor").addEventListener("click", () => setMode("visitor"));
  $("#load-user").addEventListener("click", () => {
    state.userId = $("#user-id").value.trim();
    refresh();
  });
  $("#user-id").addEventListener("keydown", (event) => {
    if (event.key === "Enter") $("#load-user").click();
  });
  $("#random-user").addEventListener("click", () => {
    $("#user-id").value = String(1 + Math.floor(Math.random() * Math.max(state.users, 1)));
    $("#load-user").click();
  });
  $("#lambda").addEventListener("input", () => {
    $("#lambda-value").textContent = Number($("#lambda").value).toFixed(2);
    clearTimeout(sliderTimer);
    sliderTimer = setTimeout(refresh, 80);  // re-rank live, without a request per pixel
  });
  document.querySelectorAll('input[name="method"]').forEach((radio) =>
    radio.addEventListener("change", refresh));
  $("#search").addEventListener("input", search);
  $("#visitor-clear").addEventListener("click", () => {
    state.visitor.clear();
    drawVisitorRatings();
    refresh();
  });
  document.querySelector("main").addEventListener("mouseover", highlight);
  // Start the slider and the method at the run's own defaults (its lambda was chosen on
  // valid when it was trained), not at a value written into the page.
  state.ready = fetchJson("/health").then((health) => {
    state.users = health.users;
    const defaults = health.defaults || {};
    if (typeof defaults.lambda === "number") {
      $("#lambda").value = String(defaults.lambda);
      $("#lambda-value").textContent = defaults.lambda.toFixed(2);
    }
    const radio = document.querySelector(`input[name="method"][value="${defaults.method}"]`);
    if (radio) radio.checked = true;
  }).catch(() => {});
}

init();
