// Lab Manager's few client behaviours. Everything else is htmx attributes and server responses.
(function () {
  "use strict";

  function onReady(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  // Toasts: dismiss on click; success and info fade after a few seconds, errors stay until closed.
  function armToasts(root) {
    root.querySelectorAll(".toast:not([data-armed])").forEach(function (toast) {
      toast.dataset.armed = "1";
      if (!toast.classList.contains("error")) setTimeout(function () { toast.remove(); }, 6000);
    });
  }
  document.addEventListener("click", function (e) {
    var close = e.target.closest(".toast-close");
    if (close) close.closest(".toast").remove();
    var print = e.target.closest("[data-print]");
    if (print) window.print();
  });
  document.addEventListener("change", function (e) {
    if (e.target.matches("select[data-autosubmit]")) e.target.form.submit();
  });

  // "/" focuses the find-case box (a barcode scanner types into it and presses Enter).
  document.addEventListener("keydown", function (e) {
    if (e.key === "/" && !e.target.closest("input, textarea, select")) {
      var box = document.getElementById("find-number");
      if (box) { e.preventDefault(); box.focus(); }
    }
  });

  // ---- The board ---------------------------------------------------------------------------
  var reasonDialog, pendingMove;

  function filterValues() {
    var form = document.getElementById("filters");
    var values = {};
    if (form) new FormData(form).forEach(function (v, k) { if (v) values[k] = v; });
    return values;
  }

  function postMove(card, status, reason) {
    var values = filterValues();
    values.status = status;
    if (reason) values.reason = reason;
    htmx.ajax("POST", card.dataset.moveUrl, {
      source: card, target: "#board-columns", swap: "outerHTML", values: values,
    });
  }

  function snapBack(evt) {
    var ref = evt.from.children[evt.oldIndex] || null;
    evt.from.insertBefore(evt.item, ref);
  }

  function askReason(evt, status) {
    pendingMove = evt;
    var column = evt.to.closest(".column");
    document.getElementById("reason-title").textContent =
      "Move " + evt.item.dataset.caseNumber + " to " + column.querySelector("h2 span").textContent;
    document.getElementById("reason-input").value = "";
    reasonDialog.showModal();
  }

  function setupDialog() {
    reasonDialog = document.getElementById("reason-dialog");
    if (!reasonDialog || reasonDialog.dataset.ready) return;
    reasonDialog.dataset.ready = "1";
    document.getElementById("reason-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var reason = document.getElementById("reason-input").value.trim();
      if (!reason) return;
      var evt = pendingMove; pendingMove = null;
      reasonDialog.close();
      postMove(evt.item, evt.to.dataset.status, reason);
    });
    document.getElementById("reason-cancel").addEventListener("click", function () { reasonDialog.close(); });
    reasonDialog.addEventListener("close", function () {
      if (pendingMove) { snapBack(pendingMove); pendingMove = null; }
      document.body.classList.remove("dragging");
    });
  }

  function setupSortable(root) {
    if (typeof Sortable === "undefined") return;
    root.querySelectorAll(".board .cards").forEach(function (list) {
      if (list.dataset.sortable) return;
      list.dataset.sortable = "1";
      Sortable.create(list, {
        group: "board", animation: 120, ghostClass: "sortable-ghost", filter: "details, a, input, select, button",
        preventOnFilter: false, delay: 80, delayOnTouchOnly: true,
        onStart: function (evt) {
          document.body.classList.add("dragging");
          var allowed = (evt.item.dataset.allowed || "").split(" ");
          document.querySelectorAll(".board .column").forEach(function (col) {
            var ok = allowed.indexOf(col.dataset.status) !== -1;
            col.classList.toggle("drop-ok", ok);
            col.classList.toggle("drop-no", !ok && col.dataset.status !== evt.from.dataset.status);
          });
        },
        onEnd: function (evt) {
          document.querySelectorAll(".board .column").forEach(function (col) {
            col.classList.remove("drop-ok", "drop-no");
          });
          if (evt.from === evt.to) { document.body.classList.remove("dragging"); snapBack(evt); return; }
          var status = evt.to.dataset.status;
          if (evt.to.closest(".column").hasAttribute("data-needs-reason")) { askReason(evt, status); return; }
          document.body.classList.remove("dragging");
          // The server answers with the whole board as it now is: a refused move comes back in
          // its old column with the reason in a toast.
          postMove(evt.item, status);
        },
      });
    });
  }

  // Pause the live poll while someone is dragging, typing a reason or has a menu open.
  document.addEventListener("htmx:beforeRequest", function (e) {
    var elt = e.detail.elt;
    if (!elt.hasAttribute || !elt.hasAttribute("data-poll")) return;
    var busy = document.body.classList.contains("dragging") ||
      (reasonDialog && reasonDialog.open) ||
      elt.querySelector(".card-menu[open]") ||
      (document.activeElement && elt.contains(document.activeElement) && document.activeElement.matches("input, select, textarea"));
    if (busy) e.preventDefault();
  });

  htmx.onLoad(function (root) {
    armToasts(document);
    setupSortable(root.querySelectorAll ? root : document);
  });
  onReady(function () { setupDialog(); armToasts(document); setupSortable(document); });
})();
