// The Mechanics API reference page: renders the OpenAPI document served beside it
// (`openapi.json`) as plain HTML. Written for Mechanics and embedded in the binary, so the page
// needs no CDN and no download; it uses only the DOM (text is set with textContent, never
// parsed as HTML).
(function () {
  "use strict";
  var root = document.getElementById("api");
  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function refName(ref) {
    return ref ? ref.replace("#/components/schemas/", "") : "";
  }
  function typeOf(schema) {
    if (!schema) return "";
    if (schema.$ref) return refName(schema.$ref);
    if (schema.oneOf) return schema.oneOf.map(typeOf).join(" | ");
    if (schema.anyOf) return schema.anyOf.map(typeOf).join(" | ");
    if (schema.allOf) return schema.allOf.map(typeOf).join(" & ");
    if (schema.enum) return schema.enum.map(JSON.stringify).join(" | ");
    var type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "any";
    if (type === "array") return typeOf(schema.items) + "[]";
    return type;
  }
  function bodyType(content) {
    if (!content) return "";
    var kinds = Object.keys(content);
    return kinds.map(function (kind) {
      return kind + (content[kind].schema ? " " + typeOf(content[kind].schema) : "");
    }).join(", ");
  }
  function style() {
    var css = "body{font:15px/1.5 system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em}" +
      "code,.m{font-family:ui-monospace,monospace}.op{border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:.5em 1em}" +
      ".m{font-weight:bold;text-transform:uppercase;margin-right:.5em}table{border-collapse:collapse}" +
      "td,th{border-bottom:1px solid #eee;padding:.2em .6em;text-align:left;vertical-align:top}";
    var node = el("style", css);
    document.head.appendChild(node);
  }
  function render(doc) {
    root.textContent = "";
    root.appendChild(el("h1", doc.info.title + " " + doc.info.version));
    if (doc.info.description) root.appendChild(el("p", doc.info.description));
    root.appendChild(el("p", "OpenAPI " + doc.openapi + " document: openapi.json"));
    Object.keys(doc.paths).forEach(function (path) {
      var item = doc.paths[path];
      ["get", "post", "put", "patch", "delete"].forEach(function (method) {
        var op = item[method];
        if (!op) return;
        var box = el("section", null, "op");
        var head = el("h3");
        head.appendChild(el("span", method, "m"));
        head.appendChild(el("code", path));
        box.appendChild(head);
        if (op.summary) box.appendChild(el("p", op.summary));
        var access = op.security && op.security.length && Object.keys(op.security[0]).length
          ? "Needs an API key (Authorization: Bearer or X-API-Key)." : "Public.";
        box.appendChild(el("p", access));
        if (op.parameters && op.parameters.length) {
          var params = el("table");
          op.parameters.forEach(function (p) {
            var row = el("tr");
            row.appendChild(el("td", p.name + " (" + p.in + (p.required ? ", required" : "") + ")"));
            row.appendChild(el("td", typeOf(p.schema)));
            row.appendChild(el("td", p.description || ""));
            params.appendChild(row);
          });
          box.appendChild(params);
        }
        if (op.requestBody) box.appendChild(el("p", "Body: " + bodyType(op.requestBody.content)));
        var answers = el("table");
        Object.keys(op.responses || {}).forEach(function (status) {
          var answer = op.responses[status];
          var row = el("tr");
          row.appendChild(el("td", status));
          row.appendChild(el("td", answer.description || ""));
          row.appendChild(el("td", bodyType(answer.content)));
          answers.appendChild(row);
        });
        box.appendChild(answers);
        root.appendChild(box);
      });
    });
    var schemas = (doc.components && doc.components.schemas) || {};
    root.appendChild(el("h2", "Schemas"));
    Object.keys(schemas).forEach(function (name) {
      var schema = schemas[name];
      var box = el("section", null, "op");
      box.appendChild(el("h3", name));
      if (schema.description) box.appendChild(el("p", schema.description));
      var props = schema.properties || {};
      var required = schema.required || [];
      var table = el("table");
      Object.keys(props).forEach(function (prop) {
        var row = el("tr");
        row.appendChild(el("td", prop + (required.indexOf(prop) >= 0 ? " *" : "")));
        row.appendChild(el("td", typeOf(props[prop])));
        row.appendChild(el("td", props[prop].description || ""));
        table.appendChild(row);
      });
      if (!Object.keys(props).length) box.appendChild(el("p", typeOf(schema)));
      box.appendChild(table);
      root.appendChild(box);
    });
  }
  style();
  fetch("openapi.json")
    .then(function (r) { return r.json(); })
    .then(render)
    .catch(function (err) { root.textContent = "Cannot load openapi.json: " + err; });
})();
