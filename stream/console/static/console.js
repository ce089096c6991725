// The console's only script (served by the tool itself; nothing is fetched elsewhere).
// The queue follows the topics without a reload: the rows are rebuilt from /api/queue
// every two seconds with textContent, so a value from an event is never markup.
(function () {
  "use strict";
  var table = document.getElementById("queue");
  if (table) {
    var tbody = table.querySelector("tbody");
    var stamp = document.getElementById("updated");
    var cell = function (tr, text) {
      var td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
      return td;
    };
    var refresh = function () {
      var q = new URLSearchParams(new FormData(document.getElementById("filters")));
      fetch(table.dataset.live + "?" + q.toString(), {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (items) {
          if (!items) { return; }
          var rows = document.createDocumentFragment();
          items.forEach(function (it) {
            var tr = document.createElement("tr");
            tr.className = "level-" + it.level;
            cell(tr, it.kind);
            cell(tr, it.tenant);
            var td = document.createElement("td");
            var a = document.createElement("a");
            a.href = "/item/" + encodeURIComponent(it.kind) + "/" + encodeURIComponent(it.id);
            a.textContent = it.entity;
            td.appendChild(a);
            tr.appendChild(td);
            cell(tr, it.level);
            cell(tr, it.risk === null ? "" : it.risk.toFixed(2));
            cell(tr, it.alerts === null ? "" : String(it.alerts));
            cell(tr, it.closed ? "closed" : it.status);
            cell(tr, it.assignee || "");
            rows.appendChild(tr);
          });
          tbody.replaceChildren(rows);
          stamp.textContent = "updated " + new Date().toLocaleTimeString();
        })
        .catch(function () { /* the next tick tries again */ });
    };
    setInterval(refresh, 2000);
  }
  // Sortable tables: a click on a header sorts by that column (numbers as numbers).
  document.querySelectorAll("table.sortable th").forEach(function (th, k) {
    th.addEventListener("click", function () {
      var body = th.closest("table").querySelector("tbody");
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.dataset.asc !== "1";
      th.dataset.asc = asc ? "1" : "0";
      rows.sort(function (a, b) {
        var x = a.cells[k].textContent, y = b.cells[k].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
})();
