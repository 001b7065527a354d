// The playground: edit a template with its problems shown at their lines as you type, fill its
// variables, see the exact messages, run them on one or two models side by side, and save.
import { getJSON, sendJSON, streamEvents } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const CHECK_AFTER = 250; // ms of no typing before the draft is checked
const FIX_FIRST = "Fix the problems on the left to see the messages.";
let name = "";
let variables = {};
let timer = null;
let generation = 0; // answers to an older draft are dropped

function gutter(count, bad) {
  const lines = [];
  for (let n = 1; n <= count; n += 1) {
    const line = document.createElement("span");
    line.textContent = `${n}\n`;
    if (bad.has(n)) line.className = "bad";
    lines.push(line);
  }
  $("gutter").replaceChildren(...lines);
  $("gutter").scrollTop = $("source").scrollTop;
}

function showErrors(errors) {
  const list = $("errors");
  list.replaceChildren();
  for (const e of errors) {
    const item = document.createElement("li");
    item.dataset.line = e.line;
    item.textContent = `line ${e.line}, column ${e.column}: ${e.message}`;
    item.addEventListener("click", () => goToLine(e.line));
    list.append(item);
  }
  const count = $("source").value.split("\n").length;
  gutter(count, new Set(errors.map((e) => e.line)));
}

function goToLine(line) {
  const box = $("source");
  const rows = box.value.split("\n");
  const at = rows.slice(0, line - 1).reduce((sum, row) => sum + row.length + 1, 0);
  box.focus();
  box.setSelectionRange(at, at + (rows[line - 1] || "").length);
}

function showVariables(declared) {
  const box = $("variables");
  const keep = { ...variables };
  box.replaceChildren();
  for (const [key, fallback] of Object.entries(declared || {})) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.dataset.name = key;
    input.value = key in keep ? keep[key] : String(fallback);
    input.addEventListener("input", () => {
      variables[key] = input.value;
      render();
    });
    variables[key] = input.value;
    label.append(`${key} `, input);
    box.append(label);
  }
}

function payload() {
  return {
    template: name,
    source: $("source").value,
    message: $("pg-message").value,
    variables: { ...variables },
  };
}

async function render() {
  const mine = ++generation;
  const { status, body } = await sendJSON("/api/render", "POST", payload());
  if (mine !== generation) return;
  const out = $("rendered");
  out.replaceChildren();
  if (status === 422) {
    out.textContent = FIX_FIRST;
    return;
  }
  for (const m of body.messages) {
    const block = document.createElement("div");
    block.className = `rendered ${m.role}`;
    const role = document.createElement("div");
    role.className = "role";
    role.textContent = m.role;
    const text = document.createElement("pre");
    text.textContent = m.text;
    block.append(role, text);
    out.append(block);
  }
}

async function check() {
  const mine = ++generation;
  const { body } = await sendJSON(`/api/templates/${encodeURIComponent(name)}/check`, "POST", {
    source: $("source").value,
  });
  if (mine !== generation) return;
  showErrors(body.errors);
  if (body.errors.length) {
    $("rendered").textContent = FIX_FIRST;
    return;
  }
  showVariables(body.variables);
  await render();
}

function edited() {
  $("save-status").textContent = "";
  gutter($("source").value.split("\n").length, new Set());
  clearTimeout(timer);
  timer = setTimeout(check, CHECK_AFTER);
}

async function open(template) {
  name = template;
  variables = {};
  const { body } = await getJSON(`/api/templates/${encodeURIComponent(name)}`);
  $("source").value = body.source;
  $("save-status").textContent = body.path;
  await check();
}

async function save() {
  const { status, body } = await sendJSON(`/api/templates/${encodeURIComponent(name)}`, "PUT", {
    source: $("source").value,
  });
  if (status === 422) {
    showErrors(body.errors);
    $("save-status").textContent = "Not saved: fix the problems listed below.";
    return;
  }
  $("save-status").textContent = `Saved ${body.path}.`;
  await render();
}

async function runOne(column, model) {
  const output = column.querySelector(".output");
  const stats = column.querySelector(".stats");
  output.replaceChildren();
  stats.textContent = model ? `${model}: running…` : "";
  if (!model) return;
  let said = "";
  try {
    await streamEvents("/api/run", { ...payload(), model }, undefined, {
      delta(data) {
        said += data.text;
        output.replaceChildren(renderMarkdown(said));
      },
      notice: (data) => { stats.textContent = data.text; },
      final(data) {
        output.replaceChildren(renderMarkdown(data.text));
        const tokens = data.input_tokens === null ? "tokens not reported"
          : `${data.input_tokens} in + ${data.output_tokens} out tokens`;
        const first = data.first_token_ms === null ? "" : `, first token ${data.first_token_ms} ms`;
        stats.textContent = `${data.model}: ${data.status}, ${tokens}, ${data.latency_ms} ms${first}`;
      },
    });
  } catch (error) {
    stats.textContent = error.message;
  }
}

async function run() {
  $("run").disabled = true;
  try {
    await Promise.all([runOne($("run-a"), $("model-a").value), runOne($("run-b"), $("model-b").value)]);
  } finally {
    $("run").disabled = false;
  }
}

async function start() {
  const [{ body: listed }, { body: offered }] = await Promise.all([
    getJSON("/api/templates"), getJSON("/api/models"),
  ]);
  const select = $("template");
  for (const t of listed.templates) select.append(new Option(t.name, t.name));
  for (const p of listed.problems) select.append(new Option(p.path.replace(/\.[a-z]+$/, ""), p.path.replace(/\.[a-z]+$/, "")));
  const [a, b] = [$("model-a"), $("model-b")];
  b.append(new Option("(one model)", ""));
  for (const spec of offered.models) {
    a.append(new Option(spec, spec));
    b.append(new Option(spec, spec));
  }
  select.addEventListener("change", () => open(select.value));
  $("source").addEventListener("input", edited);
  $("source").addEventListener("scroll", () => { $("gutter").scrollTop = $("source").scrollTop; });
  $("pg-message").addEventListener("input", () => render());
  $("save").addEventListener("click", save);
  $("run").addEventListener("click", run);
  const wanted = new URLSearchParams(location.search).get("template");
  if (wanted) select.value = wanted;
  await open(select.value);
}

start().catch((error) => { $("save-status").textContent = error.message; });
