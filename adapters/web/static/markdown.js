// Markdown to DOM nodes, safely: every piece of text becomes a text node (textContent), so no
// HTML from a user or a model is ever parsed. Covers what chat replies use: paragraphs, line
// breaks, headings, lists, fenced and inline code, bold, italic and http(s) links.

const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(\*[^*\s][^*\n]*\*)|\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/;
const LIST_ITEM = /^\s*([-*+]|\d+[.)])\s+(.*)$/;
const ORDERED = /^\s*\d/;
const HEADING = /^(#{1,6})\s+(.*)$/;

function element(tag, ...children) {
  const node = document.createElement(tag);
  node.append(...children);
  return node;
}

function inline(text, parent) {
  let rest = text;
  while (rest) {
    const match = INLINE.exec(rest);
    if (!match) {
      parent.append(rest);
      return;
    }
    parent.append(rest.slice(0, match.index));
    const [whole, code, bold, italic, label, url] = match;
    if (code) {
      parent.append(element("code", code.slice(1, -1)));
    } else if (bold) {
      const strong = element("strong");
      inline(bold.slice(2, -2), strong);
      parent.append(strong);
    } else if (italic) {
      const em = element("em");
      inline(italic.slice(1, -1), em);
      parent.append(em);
    } else {
      const link = element("a", label);
      link.href = url; // http(s) only (the pattern): no javascript: URLs
      link.rel = "noopener noreferrer nofollow";
      link.target = "_blank";
      parent.append(link);
    }
    rest = rest.slice(match.index + whole.length);
  }
}

function lines(parent, texts) {
  texts.forEach((text, i) => {
    if (i) parent.append(element("br"));
    inline(text, parent);
  });
}

export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const rows = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < rows.length) {
    const row = rows[i];
    if (row.startsWith("```")) {
      const code = [];
      for (i += 1; i < rows.length && !rows[i].startsWith("```"); i += 1) code.push(rows[i]);
      i += 1; // the closing fence (or the end of a reply still streaming)
      out.append(element("pre", element("code", code.join("\n"))));
      continue;
    }
    const heading = HEADING.exec(row);
    if (heading) {
      const node = element(`h${Math.min(heading[1].length + 2, 6)}`);
      inline(heading[2], node);
      out.append(node);
      i += 1;
      continue;
    }
    if (LIST_ITEM.test(row)) {
      const ordered = ORDERED.test(row);
      const list = element(ordered ? "ol" : "ul");
      // A list goes on while its items are of its kind: "1." after "-" starts a new one.
      const sameList = (text) => LIST_ITEM.test(text) && ORDERED.test(text) === ordered;
      for (; i < rows.length && sameList(rows[i]); i += 1) {
        const item = element("li");
        inline(LIST_ITEM.exec(rows[i])[2], item);
        list.append(item);
      }
      out.append(list);
      continue;
    }
    if (!row.trim()) {
      i += 1;
      continue;
    }
    const paragraph = [];
    for (; i < rows.length && rows[i].trim() && !rows[i].startsWith("```")
      && !HEADING.test(rows[i]) && !LIST_ITEM.test(rows[i]); i += 1) paragraph.push(rows[i]);
    const node = element("p");
    lines(node, paragraph);
    out.append(node);
  }
  return out;
}
