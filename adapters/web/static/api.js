// The JSON API as the pages use it: JSON requests, and a reply read as server-sent events from
// a fetch stream (EventSource cannot POST); aborting the fetch stops the turn on the server.

export async function getJSON(url, options = {}) {
  const response = await fetch(url, {
    ...options,
    headers: { "Content-Type": "application/json", ...(options.headers || {}) },
  });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok && response.status !== 422) throw new Error(body.error || response.statusText);
  return { status: response.status, body };
}

// A file's bytes as the body (what POST /api/chats/{chat}/pictures takes); its JSON answer.
export async function upload(url, file) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": file.type || "application/octet-stream" },
    body: file,
  });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

export function sendJSON(url, method, data) {
  return getJSON(url, { method, body: JSON.stringify(data) });
}

function dispatch(block, on) {
  let name = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (data.length && on[name]) on[name](JSON.parse(data.join("\n")));
}

// POST a message; on.delta / on.notice / on.image / on.final get each event's data.
export async function streamEvents(url, payload, signal, on) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload),
    signal,
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({ error: response.statusText }));
    throw new Error(body.error || response.statusText);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let match;
    while ((match = /\r?\n\r?\n/.exec(buffer))) {
      dispatch(buffer.slice(0, match.index), on);
      buffer = buffer.slice(match.index + match[0].length);
    }
  }
}
