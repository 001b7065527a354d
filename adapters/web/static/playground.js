// The playground: edit a template with its problems shown at their lines as you type, fill its
// variables, see the exact messages, run them on one or two models side by side, evaluate the
// draft beside the saved version on a suite, and save.
import { getJSON, sendJSON, streamEvents } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const CHECK_AFTER = 250; // ms of no typing before the draft is checked
const FIX_FIRST = "Fix the problems on the left to see the messages.";
let name = "";
let variables = {};
let timer = null;
let checking = 0; // answers to an older draft are dropped (checks and renders apart: typing a
let rendering = 0; // message must not drop the check of the source)
let evaluation = null; // the last evaluation: { source, suite, rates }; saving warns from it

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

function percent(rate) {
  return `${Math.round(rate * 100)}%`;
}

function messageBlock(m) {
  const block = document.createElement("div");
  block.className = `rendered ${m.role}`;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = m.role;
  const text = document.createElement("pre");
  text.textContent = m.text;
  block.append(role, text);
  return block;
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
  const mine = ++rendering;
  const { status, body } = await sendJSON("/api/render", "POST", payload());
  if (mine !== rendering) return;
  const out = $("rendered");
  out.replaceChildren();
  if (status === 422) {
    out.textContent = FIX_FIRST;
    return;
  }
  for (const m of body.messages) out.append(messageBlock(m));
}

async function check() {
  const mine = ++checking;
  const { body } = await sendJSON(`/api/templates/${encodeURIComponent(name)}/check`, "POST", {
    source: $("source").value,
  });
  if (mine !== checking) return;
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
  timer = setTimeout(() => check().catch(failed), CHECK_AFTER);
}

// A request that failed (401 once the session expired, 413, 500...): said where the result
// would have been, rather than a page that silently stops updating.
function failed(error) {
  $("rendered").textContent = error.message;
}

async function open(template) {
  name = template;
  variables = {};
  const { body } = await getJSON(`/api/templates/${encodeURIComponent(name)}`);
  $("source").value = body.source;
  $("save-status").textContent = body.path;
  await Promise.all([check(), loadSuites()]);
}

async function save() {
  const rates = evaluation && evaluation.source === $("source").value ? evaluation.rates : null;
  if (rates && "draft" in rates && rates.draft < rates.saved) {
    const question = `This draft passes ${percent(rates.draft)} of suite ${evaluation.suite}, `
      + `the saved version ${percent(rates.saved)}. Save it anyway?`;
    if (!window.confirm(question)) {
      $("save-status").textContent = "Not saved: the draft passes fewer cells than the saved version.";
      return;
    }
  }
  let reply;
  try {
    reply = await sendJSON(`/api/templates/${encodeURIComponent(name)}`, "PUT", {
      source: $("source").value,
    });
  } catch (error) {
    $("save-status").textContent = `Not saved: ${error.message}`;
    return;
  }
  const { status, body } = reply;
  if (status === 422) {
    showErrors(body.errors);
    $("save-status").textContent = "Not saved: fix the problems listed below.";
    return;
  }
  $("save-status").textContent = `Saved ${body.path}.`;
  evaluation = null; // the saved version is this draft now
  await render();
}

async function loadSuites() {
  const { body } = await getJSON(`/api/evals?template=${encodeURIComponent(name)}`);
  const select = $("suite");
  select.replaceChildren();
  for (const suite of body.suites) {
    select.append(new Option(`${suite.name} (${suite.cases} cases)`, suite.name));
  }
  $("evaluate").disabled = !body.suites.length;
  $("eval-status").textContent = body.suites.length ? ""
    : `No suite in ${body.directory} runs ${name}.`;
  $("eval-matrix").replaceChildren();
  $("eval-cells").replaceChildren();
  evaluation = null;
}

function showMatrix(body) {
  const table = $("eval-matrix");
  const head = document.createElement("tr");
  for (const title of ["version", "model", "pass rate", "passed", "score"]) {
    const th = document.createElement("th");
    th.textContent = title;
    head.append(th);
  }
  table.replaceChildren(head);
  for (const line of body.matrix) {
    const row = document.createElement("tr");
    if (line.pass_rate < body.threshold) row.className = "below";
    const values = [line.version, line.model, percent(line.pass_rate),
      `${line.passed}/${line.cells}`, line.score.toFixed(2)];
    for (const value of values) {
      const td = document.createElement("td");
      td.textContent = value;
      row.append(td);
    }
    table.append(row);
  }
}

function heading(text) {
  const h = document.createElement("h4");
  h.textContent = text;
  return h;
}

function showCell(cell) {
  const box = document.createElement("details");
  box.className = `eval-cell ${cell.pass ? "pass" : "fail"}`;
  const summary = document.createElement("summary");
  const why = cell.pass ? "passed" : (cell.failures[0] || "failed");
  summary.textContent = `${cell.pass ? "✓" : "✗"} case ${cell.case} (${cell.message}) · `
    + `${cell.version} · ${cell.model} — ${why}`;
  const detail = document.createElement("div");
  detail.className = "detail";
  detail.append(heading("Rendered messages"));
  if (cell.messages_error) detail.append(cell.messages_error);
  for (const m of cell.messages) detail.append(messageBlock(m));
  detail.append(heading("Reply"));
  const reply = document.createElement("pre");
  reply.className = "reply";
  reply.textContent = cell.status === "ok" ? cell.reply : `${cell.status}: ${cell.error}`;
  detail.append(reply, heading("Assertions"));
  const list = document.createElement("ul");
  for (const a of cell.assertions) {
    const item = document.createElement("li");
    item.className = a.pass ? "pass" : "fail";
    item.textContent = `${a.pass ? "✓" : "✗"} ${a.label}: ${a.reason}`;
    list.append(item);
  }
  detail.append(list);
  box.append(summary, detail);
  return box;
}

async function evaluate() {
  const source = $("source").value;
  const suite = $("suite").value;
  $("evaluate").disabled = true;
  $("eval-status").textContent = `Evaluating ${suite}…`;
  try {
    const { status, body } = await sendJSON("/api/evals/run", "POST", {
      suite, template: name, source,
    });
    if (status === 422) {
      if (body.errors) showErrors(body.errors);
      $("eval-status").textContent = body.error || "Fix the problems on the left to evaluate.";
      return;
    }
    evaluation = { source, suite, rates: body.pass_rates };
    showMatrix(body);
    $("eval-cells").replaceChildren(...body.cells.map(showCell));
    const rates = Object.entries(body.pass_rates).map(([v, r]) => `${v} ${percent(r)}`);
    $("eval-status").textContent = `Pass rate: ${rates.join(", ")}.`;
  } catch (error) {
    $("eval-status").textContent = error.message;
  } finally {
    $("evaluate").disabled = false;
  }
}

async function runOne(column, model) {
  const output = column.querySelector(".output");
  const stats = column.querySelector(".stats");
  output.replaceChildren();
  stats.textContent = model ? `${model}: running…` : "";
  if (!model) return;
  let said = "";
  const notices = []; // an error's notice comes just before the final event: both are shown
  try {
    await streamEvents("/api/run", { ...payload(), model }, undefined, {
      delta(data) {
        said += data.text;
        output.replaceChildren(renderMarkdown(said));
      },
      notice(data) {
        notices.push(data.text);
        stats.textContent = data.text;
      },
      final(data) {
        output.replaceChildren(renderMarkdown(data.text));
        const tokens = data.input_tokens === null ? "tokens not reported"
          : `${data.input_tokens} in + ${data.output_tokens} out tokens`;
        const first = data.first_token_ms === null ? "" : `, first token ${data.first_token_ms} ms`;
        const why = notices.length ? ` — ${notices.join(" ")}` : "";
        stats.textContent = `${data.model}: ${data.status}, ${tokens}, ${data.latency_ms} ms`
          + `${first}${why}`;
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
  select.addEventListener("change", () => open(select.value).catch(failed));
  $("source").addEventListener("input", edited);
  $("source").addEventListener("scroll", () => { $("gutter").scrollTop = $("source").scrollTop; });
  $("pg-message").addEventListener("input", () => render().catch(failed));
  $("save").addEventListener("click", save);
  $("run").addEventListener("click", run);
  $("evaluate").addEventListener("click", evaluate);
  const wanted = new URLSearchParams(location.search).get("template");
  if (wanted) select.value = wanted;
  await open(select.value);
}

start().catch((error) => { $("save-status").textContent = error.message; });
