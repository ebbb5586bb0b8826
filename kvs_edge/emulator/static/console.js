// kvs-edge emulator console: polls the emulator's unsigned /console/api routes (localhost developer tool) and plays
// the selected stream's HLS session with hls.js or its DASH session with dash.js (both shipped next to this file;
// no CDN).
"use strict";

const state = { selected: null, protocols: {}, player: null, protocol: null, url: null, errors: [],
                lastThumbs: 0, retryAt: 0, play };
window.kvsConsole = state; // for tests and curious developers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function api(what, stream) {
  const q = stream ? `?stream=${encodeURIComponent(stream)}` : "";
  const r = await fetch(`/console/api/${what}${q}`, { cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(`${body.__type || r.status}: ${body.Message || ""}`);
  return body;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function isoMs(seconds) {
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace("Z", "");
}

function renderStreams(streams) {
  const body = document.querySelector("#streams tbody");
  body.replaceChildren();
  document.getElementById("no-streams").hidden = streams.length > 0;
  for (const s of streams) {
    const acks = s.ErrorAcks.length
      ? s.ErrorAcks.map(a => `${a.ErrorId} @${a.FragmentTimecode}`).join(", ") : "none";
    const age = s.LastFragmentAgeSeconds === null ? "-" : `${s.LastFragmentAgeSeconds.toFixed(1)} s ago`;
    const tr = el("tr", { class: "stream" + (s.StreamName === state.selected ? " selected" : ""),
                          "data-stream": s.StreamName },
      el("td", {}, s.StreamName), el("td", {}, s.Status), el("td", { class: "num" }, s.Fragments),
      el("td", { class: "num" }, bytes(s.Bytes)), el("td", {}, age), el("td", { class: "num" }, s.ActiveConnections),
      el("td", { class: s.ErrorAcks.length ? "err" : "" }, acks));
    tr.addEventListener("click", () => select(s.StreamName));
    body.append(tr);
  }
  if (!state.selected) {
    const first = streams.find(s => s.Fragments > 0);
    if (first) select(first.StreamName);
  }
}

function renderFragments(frags) {
  const body = document.querySelector("#fragments tbody");
  body.replaceChildren();
  for (const f of frags) {
    body.append(el("tr", {},
      el("td", {}, f.FragmentNumber), el("td", {}, isoMs(f.ProducerTimestamp)), el("td", {}, isoMs(f.ServerTimestamp)),
      el("td", { class: "num" }, `${f.FragmentLengthInMilliseconds} ms`), el("td", { class: "num" }, f.Frames),
      el("td", { class: "num" }, bytes(f.FragmentSizeInBytes)),
      el("td", { class: f.Defects.length ? "err" : "" }, f.Defects.join(", "))));
  }
}

function renderThumbs(images) {
  const box = document.getElementById("thumbs");
  box.replaceChildren();
  for (const im of images) {
    const cap = el("figcaption", {}, isoMs(im.TimeStamp).slice(11));
    if (im.ImageContent) {
      box.append(el("figure", {}, el("img", { src: `data:image/jpeg;base64,${im.ImageContent}`, alt: "frame" }), cap));
    } else {
      box.append(el("figure", {}, el("span", { class: "err" }, im.Error), cap));
    }
  }
}

function playerState(text) {
  document.getElementById("player-state").textContent = text;
}

// One adapter per protocol: start(video, url, failed) -> { destroy() }. failed(message, fatal) reports an error.
const players = {
  HLS(video, url, failed) {
    if (!window.Hls || !Hls.isSupported()) {
      video.src = url; // Safari plays HLS natively
      return { destroy() { video.removeAttribute("src"); video.load(); } };
    }
    const hls = new Hls({ liveSyncDurationCount: 2, lowLatencyMode: false });
    hls.on(Hls.Events.ERROR, (_, data) => failed(`hls.js ${data.fatal ? "fatal " : ""}error: ${data.details}`,
                                                 data.fatal));
    hls.on(Hls.Events.MANIFEST_PARSED, () => { playerState("playing (HLS, hls.js)"); video.play().catch(() => {}); });
    hls.loadSource(url);
    hls.attachMedia(video);
    return hls;
  },
  DASH(video, url, failed) {
    const dash = dashjs.MediaPlayer().create();
    dash.updateSettings({ debug: { logLevel: dashjs.Debug.LOG_LEVEL_WARNING },
                          streaming: { delay: { liveDelayFragmentCount: 2 } } });
    dash.on(dashjs.MediaPlayer.events.ERROR, e => failed(`dash.js error ${e.error.code}: ${e.error.message}`, true));
    dash.on(dashjs.MediaPlayer.events.STREAM_INITIALIZED, () => playerState("playing (DASH, dash.js)"));
    dash.initialize(video, url, true);
    return dash; // a dash.js MediaPlayer: destroy() detaches it from the video
  },
};

function stopPlayer() {
  if (state.player) { state.player.destroy(); state.player = null; }
}

function play(url, protocol) {
  stopPlayer();
  Object.assign(state, { url, protocol, errors: [] });
  const failed = (message, fatal) => {
    state.errors.push({ message, fatal });
    playerState(message);
    if (fatal) { stopPlayer(); state.retryAt = Date.now() + 3000; }
  };
  state.player = players[protocol](document.getElementById("player"), url, failed);
}

async function startPlayer() {
  stopPlayer();
  const protocol = state.protocols[state.selected] || "HLS";
  try {
    play((await api(protocol.toLowerCase(), state.selected)).url, protocol);
  } catch (e) {
    playerState(`no playback: ${e.message}`);
    state.retryAt = Date.now() + 3000;
  }
}

async function select(name) {
  state.selected = name;
  state.lastThumbs = 0;
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-name").textContent = name;
  document.getElementById("protocol").value = state.protocols[name] || "HLS";
  for (const tr of document.querySelectorAll("#streams tr.stream")) {
    tr.classList.toggle("selected", tr.dataset.stream === name);
  }
  await startPlayer();
}

async function tick() {
  try {
    renderStreams(await api("streams"));
    if (state.selected) {
      renderFragments(await api("fragments", state.selected));
      if (!state.player && state.retryAt && Date.now() >= state.retryAt) { state.retryAt = 0; startPlayer(); }
      if (Date.now() - state.lastThumbs > 10000) {
        state.lastThumbs = Date.now();
        renderThumbs(await api("images", state.selected));
      }
    }
  } catch (e) {
    playerState(`console: ${e.message}`);
  }
}

document.getElementById("protocol").addEventListener("change", e => {
  state.protocols[state.selected] = e.target.value;
  startPlayer();
});
tick();
setInterval(tick, 2000);
