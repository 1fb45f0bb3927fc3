// The tokentts page: speak text through POST /v1/audio/speech and manage voices.
// Speech is requested as raw PCM so that it can be played while it streams in (Web Audio);
// when the stream ends, the same samples become a WAV file for the <audio> element and the download link.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { sampleRate: 24000, apiKey: localStorage.getItem("tokentts-api-key") || "" };

function authHeaders(extra = {}) {
  return state.apiKey ? { ...extra, Authorization: `Bearer ${state.apiKey}` } : extra;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error?.message || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function setStatus(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

// ---- streamed playback ---------------------------------------------------------------------

// Plays 16-bit PCM chunks back to back as they arrive.
class StreamPlayer {
  constructor(sampleRate) {
    this.sampleRate = sampleRate;
    this.context = new AudioContext();
    this.nextStart = 0;
  }

  play(samples) {
    const buffer = this.context.createBuffer(1, samples.length, this.sampleRate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    // A little lead time so that the first chunks do not start late and overlap.
    this.nextStart = Math.max(this.nextStart, this.context.currentTime + 0.05);
    source.start(this.nextStart);
    this.nextStart += buffer.duration;
  }
}

// Splits a byte stream into Int16 samples, carrying an odd trailing byte over to the next chunk.
class PcmReader {
  constructor() {
    this.carry = new Uint8Array(0);
  }

  push(bytes) {
    const joined = new Uint8Array(this.carry.length + bytes.length);
    joined.set(this.carry);
    joined.set(bytes, this.carry.length);
    const even = joined.length - (joined.length % 2);
    this.carry = joined.slice(even);
    return new Int16Array(joined.slice(0, even).buffer);
  }
}

function wavBlob(chunks, sampleRate) {
  const count = chunks.reduce((n, c) => n + c.length, 0);
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, s) => [...s].forEach((ch, i) => header.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF");
  header.setUint32(4, 36 + count * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, sampleRate, true);
  header.setUint32(28, sampleRate * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  text(36, "data");
  header.setUint32(40, count * 2, true);
  return new Blob([header, ...chunks], { type: "audio/wav" });
}

async function speak() {
  const button = $("speak");
  const status = $("status");
  const input = $("text").value.trim();
  if (!input) {
    setStatus(status, "Type some text first.", true);
    return;
  }
  button.disabled = true;
  setStatus(status, "Generating…");
  const started = performance.now();
  try {
    const response = await fetch("/v1/audio/speech", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify({
        model: "tokentts",
        input,
        voice: $("voice").value,
        response_format: "pcm",
        speed: Number($("speed").value) || 1,
      }),
    });
    if (!response.ok) {
      setStatus(status, await errorMessage(response), true);
      return;
    }
    const sampleRate = Number(response.headers.get("X-Sample-Rate")) || state.sampleRate;
    let player = null;
    try {
      player = new StreamPlayer(sampleRate);
    } catch (err) {
      // No audio output (e.g. a headless browser): the finished clip still lands in the player below.
      player = null;
    }
    const pcm = new PcmReader();
    const chunks = [];
    let firstAudio = null;
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const samples = pcm.push(value);
      if (!samples.length) continue;
      chunks.push(samples);
      if (player) player.play(samples);
      if (firstAudio === null) {
        firstAudio = performance.now() - started;
        setStatus(status, `Playing (first audio after ${(firstAudio / 1000).toFixed(2)} s)…`);
      }
    }
    const seconds = chunks.reduce((n, c) => n + c.length, 0) / sampleRate;
    const url = URL.createObjectURL(wavBlob(chunks, sampleRate));
    const audio = $("player");
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = url;
    $("download").href = url;
    $("download").hidden = false;
    setStatus(status, `${seconds.toFixed(1)} s of audio in ${((performance.now() - started) / 1000).toFixed(1)} s` +
      (firstAudio === null ? "" : `, first audio after ${(firstAudio / 1000).toFixed(2)} s`));
  } catch (err) {
    setStatus(status, `Request failed: ${err.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// ---- voices ----------------------------------------------------------------------------------

async function loadVoices(select = null) {
  const response = await fetch("/v1/voices", { headers: authHeaders() });
  if (!response.ok) {
    setStatus($("upload-status"), await errorMessage(response), true);
    return;
  }
  const { voices } = await response.json();
  const chosen = select || $("voice").value;
  const menu = $("voice");
  const list = $("voices");
  menu.replaceChildren();
  list.replaceChildren();
  for (const voice of voices) {
    menu.append(new Option(voice.name, voice.name, false, voice.name === chosen));
    const item = document.createElement("li");
    const detail = voice.builtin ? voice.description : `${voice.duration.toFixed(1)} s: “${voice.transcript}”`;
    item.textContent = `${voice.name} — ${detail}`;
    if (!voice.builtin) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Delete";
      remove.addEventListener("click", () => deleteVoice(voice.name));
      item.append(remove);
    }
    list.append(item);
  }
}

async function uploadVoice(event) {
  event.preventDefault();
  const status = $("upload-status");
  const form = new FormData($("upload"));
  if (!$("voice-transcript").value.trim()) form.delete("transcript");
  setStatus(status, "Uploading…");
  const response = await fetch("/v1/voices", { method: "POST", headers: authHeaders(), body: form });
  if (!response.ok) {
    setStatus(status, await errorMessage(response), true);
    return;
  }
  const voice = await response.json();
  setStatus(status, `Added ${voice.name} (${voice.duration.toFixed(1)} s${voice.transcribed ? ", transcribed" : ""}).`);
  $("upload").reset();
  await loadVoices(voice.name);
}

async function deleteVoice(name) {
  const response = await fetch(`/v1/voices/${encodeURIComponent(name)}`, { method: "DELETE", headers: authHeaders() });
  setStatus($("upload-status"), response.ok ? `Deleted ${name}.` : await errorMessage(response), !response.ok);
  await loadVoices();
}

async function init() {
  const health = await (await fetch("/health")).json();
  state.sampleRate = health.sample_rate;
  $("model").textContent = `Model: ${health.model}${health.adapter ? ` + adapter ${health.adapter}` : ""}`;
  $("text").maxLength = health.limits.max_input_chars;
  $("key-row").hidden = !health.auth_required;
  $("api-key").value = state.apiKey;
  $("key-form").addEventListener("submit", (event) => event.preventDefault());
  $("api-key").addEventListener("change", () => {
    state.apiKey = $("api-key").value.trim();
    localStorage.setItem("tokentts-api-key", state.apiKey);
    loadVoices();
  });
  $("speak").addEventListener("click", speak);
  $("upload").addEventListener("submit", uploadVoice);
  if (!health.auth_required || state.apiKey) await loadVoices();
}

init();
