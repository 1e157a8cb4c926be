// Renders /openapi.json as a plain reference page (no external assets).
"use strict";
(async function () {
  const doc = await (await fetch("/openapi.json")).json();
  const h = (tag, text, cls) => { const n = document.createElement(tag); if (text !== undefined) n.textContent = text; if (cls) n.className = cls; return n; };
  document.getElementById("title").textContent = doc.info.title + " " + (doc.info.version || "");
  document.getElementById("version").textContent = doc.openapi;
  document.getElementById("description").append(h("p", doc.info.description || ""));
  const ref = (s) => (s && s.$ref ? s.$ref.split("/").pop() : null);
  const typeOf = (s) => {
    if (!s) return "";
    if (ref(s)) return ref(s);
    if (s.type === "array") return "array of " + typeOf(s.items);
    if (s.oneOf) return s.oneOf.map(typeOf).join(" | ");
    const t = Array.isArray(s.type) ? s.type.join(" | ") : (s.type || "");
    return t + (s.format ? " (" + s.format + ")" : "") + (s.enum ? " " + JSON.stringify(s.enum) : "");
  };
  const ops = document.getElementById("ops");
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      const box = h("div", undefined, "op");
      const title = h("div");
      title.append(h("span", method.toUpperCase(), "method"), h("code", path));
      box.append(title, h("p", op.summary || op.description || ""));
      if (op.parameters && op.parameters.length) {
        const t = h("table");
        t.innerHTML = "<tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>";
        for (const p of op.parameters) {
          const tr = h("tr");
          tr.append(h("td", p.name + (p.required ? " *" : "")), h("td", p.in), h("td", typeOf(p.schema)), h("td", p.description || ""));
          t.append(tr);
        }
        box.append(t);
      }
      const rt = h("table");
      rt.innerHTML = "<tr><th>status</th><th>description</th><th>body</th></tr>";
      for (const [code, r] of Object.entries(op.responses || {})) {
        const tr = h("tr");
        const c = r.content && r.content["application/json"];
        tr.append(h("td", code), h("td", r.description || ""), h("td", c ? typeOf(c.schema) : ""));
        rt.append(tr);
      }
      box.append(rt);
      ops.append(box);
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, s] of Object.entries((doc.components || {}).schemas || {})) {
    const box = h("div", undefined, "op");
    box.append(h("h3", name), h("p", s.description || ""));
    if (s.properties) {
      const t = h("table");
      t.innerHTML = "<tr><th>field</th><th>type</th><th>description</th></tr>";
      for (const [f, p] of Object.entries(s.properties)) {
        const tr = h("tr");
        tr.append(h("td", f + ((s.required || []).includes(f) ? " *" : "")), h("td", typeOf(p)), h("td", p.description || ""));
        t.append(tr);
      }
      box.append(t);
    } else {
      box.append(h("pre", JSON.stringify(s, null, 2)));
    }
    schemas.append(box);
  }
})();
