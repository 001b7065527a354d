// The chat page: conversations, the message box, streamed replies, stop, the /mode switch and
// pictures to send (uploaded when attached, named by their ids in the message).
import { getJSON, streamEvents, upload } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
// The chat named in the URL's #; a malformed escape (#%zz) is taken as written, not a dead page.
function hashChat() {
  const raw = location.hash.slice(1);
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}
let chat = hashChat() || "";
let running = null; // the AbortController of the reply streaming now
let attached = []; // pictures uploaded for the next message: {picture, src, width, height}
const chatURL = () => `/api/chats/${encodeURIComponent(chat)}`;

function bubble(kind, text = "") {
  const node = document.createElement("div");
  node.className = `msg ${kind}`;
  if (kind === "bot") node.append(renderMarkdown(text));
  else node.textContent = text; // a user's words are shown as typed, never as markup
  $("messages").append(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

// "Sources: [1] warranty.md — Claims; [2] ..." under a knowledge answer; text only, so a file
// name or heading is never read as markup.
function sources(reply, list) {
  if (!list || !list.length) return;
  const line = document.createElement("div");
  line.className = "sources";
  const label = (s) => `[${s.n}] ${s.source}${s.heading ? ` — ${s.heading}` : ""}`;
  line.textContent = `Sources: ${list.map(label).join("; ")}`;
  reply.append(line);
}

function notice(text, level = "info") {
  const node = bubble(`notice ${level}`, text);
  node.classList.add("pre");
}

// Pictures the user sent, as the server keeps them (same origin: the CSP allows them).
function pictures(node, list) {
  if (!list || !list.length) return;
  const strip = document.createElement("div");
  strip.className = "pictures";
  for (const p of list) {
    const picture = document.createElement("img");
    picture.src = p.src;
    picture.alt = "picture sent";
    strip.append(picture);
  }
  node.append(strip);
}

function showAttached() {
  const strip = $("attachments");
  strip.replaceChildren();
  attached.forEach((p, index) => {
    const item = document.createElement("span");
    item.className = "attached";
    const picture = document.createElement("img");
    picture.src = p.src;
    picture.alt = "picture to send";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Do not send this picture";
    remove.addEventListener("click", () => {
      attached.splice(index, 1);
      showAttached();
    });
    item.append(picture, remove);
    strip.append(item);
  });
}

// Upload each file now, so what is not a picture is told at once (the server decodes it).
async function attach(files) {
  const target = chat;
  for (const file of files) {
    try {
      const sent = await upload(`${chatURL()}/pictures`, file);
      if (chat !== target) return; // another conversation was opened meanwhile
      attached.push(sent);
      showAttached();
    } catch (error) {
      notice(`${file.name || "picture"}: ${error.message}`, "error");
    }
  }
}

function image(data) {
  const node = bubble("bot image");
  const picture = document.createElement("img");
  picture.src = data.src; // a data: URL made by the server
  picture.alt = data.prompt;
  node.append(picture);
}

async function loadChats() {
  const { body } = await getJSON("/api/chats");
  const list = $("chats");
  list.replaceChildren();
  const names = body.chats.map((c) => c.chat);
  if (chat && !names.includes(chat)) names.unshift(chat);
  for (const name of names) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = `#${encodeURIComponent(name)}`;
    link.textContent = name;
    if (name === chat) item.className = "current";
    item.append(link);
    list.append(item);
  }
}

async function loadModes(current) {
  const { body } = await getJSON("/api/templates");
  const select = $("mode");
  select.replaceChildren();
  for (const t of body.templates.filter((t) => t.chat_mode)) {
    const option = new Option(t.name, t.name, false, t.name === current);
    option.title = t.description;
    select.append(option);
  }
}

async function openChat(name) {
  chat = name;
  $("chat-name").textContent = name;
  $("messages").replaceChildren();
  attached = []; // uploaded to the chat left behind
  showAttached();
  const { body } = await getJSON(`/api/chats/${encodeURIComponent(name)}`);
  for (const turn of body.turns) {
    const node = bubble(turn.role === "user" ? "user" : "bot", turn.text);
    if (turn.status === "stopped") node.classList.add("stopped");
    pictures(node, turn.pictures);
    sources(node, turn.sources);
  }
  await Promise.all([loadChats(), loadModes(body.mode)]);
}

function newName() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `chat-${now.getFullYear()}${pad(now.getMonth() + 1)}${pad(now.getDate())}-`
    + `${pad(now.getHours())}${pad(now.getMinutes())}${pad(now.getSeconds())}`;
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

async function send(text, withPictures = []) {
  if ((!text.trim() && !withPictures.length) || running) return;
  pictures(bubble("user", text), withPictures);
  let reply = null;
  let said = "";
  running = new AbortController();
  busy(true);
  try {
    const payload = { text, pictures: withPictures.map((p) => p.picture) };
    await streamEvents(`${chatURL()}/messages`, payload, running.signal, {
      delta(data) {
        reply = reply || bubble("bot streaming");
        said += data.text;
        reply.replaceChildren(renderMarkdown(said));
        reply.scrollIntoView({ block: "end" });
      },
      notice: (data) => notice(data.text, data.kind),
      image,
      final(data) {
        if (data.text) {
          reply = reply || bubble("bot");
          reply.replaceChildren(renderMarkdown(data.text));
        }
        if (reply) {
          reply.classList.remove("streaming");
          sources(reply, data.sources);
        }
      },
    });
  } catch (error) {
    if (error.name === "AbortError") {
      if (reply) reply.classList.add("stopped");
      notice("Stopped.", "info");
    } else {
      notice(`${error.message}`, "error");
    }
  } finally {
    if (reply) reply.classList.remove("streaming");
    running = null;
    busy(false);
  }
  await refresh().catch(shown);
}

// The chat list and the mode, as the server has them after a message.
async function refresh() {
  const { body } = await getJSON(`/api/chats/${encodeURIComponent(chat)}`);
  await Promise.all([loadChats(), loadModes(body.mode)]);
}

// An API call that failed (e.g. 503: the conversation store cannot be reached): said in the
// conversation, never only in the console.
function shown(error) {
  notice(error.message, "error");
}

function start() {
  const box = $("message");
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault(); // Enter sends; Shift+Enter adds a line as usual
      $("composer").requestSubmit();
    }
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    if (running) return;
    const text = box.value;
    const sent = attached;
    box.value = "";
    attached = [];
    showAttached();
    send(text, sent);
  });
  $("picture-file").addEventListener("change", async (event) => {
    await attach([...event.target.files]);
    event.target.value = ""; // the same file can be attached again
  });
  const images = (list) => [...list].filter((f) => f.type.startsWith("image/"));
  box.addEventListener("paste", (event) => {
    const files = images(event.clipboardData.files);
    if (files.length) {
      event.preventDefault();
      attach(files);
    }
  });
  $("composer").addEventListener("dragover", (event) => event.preventDefault());
  $("composer").addEventListener("drop", (event) => {
    event.preventDefault();
    attach(images(event.dataTransfer.files));
  });
  $("stop").addEventListener("click", () => running && running.abort());
  $("mode").addEventListener("change", (event) => send(`/mode ${event.target.value}`));
  $("new-chat").addEventListener("click", () => {
    location.hash = encodeURIComponent(newName());
  });
  window.addEventListener("hashchange", () => {
    if (!running) openChat(hashChat() || newName()).catch(shown);
  });
  openChat(chat || newName()).catch(shown);
  box.focus();
}

start();
