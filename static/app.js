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
      // A toast with an Undo button stays as long as the undo works (data-ttl, ms).
      if (!toast.classList.contains("error")) setTimeout(function () { toast.remove(); }, Number(toast.dataset.ttl) || 6000);
    });
  }
  document.addEventListener("click", function (e) {
    var close = e.target.closest(".toast-close");
    if (close) close.closest(".toast").remove();
    var undone = e.target.closest(".toast-undo button");
    if (undone) setTimeout(function () { var t = undone.closest(".toast"); if (t) t.hidden = true; }, 0);
    var print = e.target.closest("[data-print]");
    if (print) window.print();
  });
  document.addEventListener("change", function (e) {
    if (e.target.matches("select[data-autosubmit]")) e.target.form.submit();
  });

  // An error beside a field goes once the person changes that field (the server checks it again
  // on the next submit); the other fields keep theirs.
  function clearFieldError(e) {
    var input = e.target;
    if (!input.matches || !input.matches("input, select, textarea") || input.type === "hidden") return;
    var holder = input.closest(".has-error");
    if (!holder) return;
    holder.classList.remove("has-error");
    holder.querySelectorAll(".error").forEach(function (p) { p.hidden = true; });
    holder.querySelectorAll("[aria-invalid]").forEach(function (el) { el.removeAttribute("aria-invalid"); });
  }
  document.addEventListener("input", clearFieldError);
  document.addEventListener("change", clearFieldError);

  // "/" focuses the find-case box (a barcode scanner types into it and presses Enter).
  document.addEventListener("keydown", function (e) {
    if (e.key === "/" && !e.target.closest("input, textarea, select")) {
      var box = document.getElementById("find-number");
      if (box) { e.preventDefault(); box.focus(); }
    }
  });

  // ---- The board ---------------------------------------------------------------------------
  var reasonDialog, pendingMove, refocus;

  function filterValues() {
    var form = document.getElementById("filters");
    var values = {};
    if (form) new FormData(form).forEach(function (v, k) { if (v) values[k] = v; });
    return values;
  }

  function postMove(card, status, reason) {
    var values = { status: status };
    if (reason) values.reason = reason;
    htmx.ajax("POST", card.dataset.moveUrl, {
      source: card, target: "#board-columns", swap: "outerHTML", values: values,
    });
  }

  // The filters push their URL: leave out the empty ones (?q=ada, not ?q=ada&lab=&provider=...).
  document.addEventListener("htmx:configRequest", function (e) {
    if (e.detail.verb !== "get" || e.detail.elt.id !== "filters") return;
    Object.keys(e.detail.parameters).forEach(function (k) {
      if (e.detail.parameters[k] === "") delete e.detail.parameters[k];
    });
  });

  // A card's Move menu holds the live poll while open, so it must not stay open by accident:
  // opening one closes the others, and a click outside or Escape closes it.
  function closeMenus(except) {
    document.querySelectorAll(".card-menu[open]").forEach(function (menu) {
      if (menu !== except) menu.open = false;
    });
  }
  document.addEventListener("toggle", function (e) {
    if (!(e.target.matches && e.target.matches(".card-menu") && e.target.open)) return;
    closeMenus(e.target);
    var choice = e.target.querySelector(".menu-body select");  // loaded on an earlier opening
    if (choice) choice.focus();
  }, true);
  document.addEventListener("click", function (e) {
    if (!e.target.closest(".card-menu")) closeMenus(null);
  });
  // The menu's form arrives when it is first opened: put the keyboard on its status choice.
  document.addEventListener("htmx:afterSwap", function (e) {
    var body = e.detail.target;
    if (!body || !body.classList || !body.classList.contains("menu-body")) return;
    var menu = body.closest(".card-menu");
    var choice = body.querySelector("select");
    if (menu && menu.open && choice) choice.focus();
  });
  document.addEventListener("keydown", function (e) {
    var menu = e.key === "Escape" && e.target.closest && e.target.closest(".card-menu[open]");
    if (!menu) return;
    menu.open = false;
    menu.querySelector("summary").focus();
  });

  // A move answers with the board re-rendered through the filters in its query string, so the
  // board stays filtered after a drag or a menu move (the form fields go in the body).
  document.addEventListener("htmx:configRequest", function (e) {
    if (e.detail.verb !== "post" || e.detail.target.id !== "board-columns") return;
    var query = new URLSearchParams(filterValues()).toString();
    if (query && e.detail.path.indexOf("?") === -1) e.detail.path += "?" + query;
  });

  // Put the card back where it came from (a cancelled reason, a drop back into its own column).
  function snapBack(evt) {
    var item = evt.item;
    if (item.parentNode) item.parentNode.removeChild(item);
    evt.from.insertBefore(item, evt.from.children[evt.oldIndex] || null);
  }

  function askReason(evt) {
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
        // The order inside a column is the server's (by date); only moves between columns count.
        group: "board", sort: false, animation: 120, ghostClass: "sortable-ghost",
        filter: "details, a, input, select, button", preventOnFilter: false,
        delay: 80, delayOnTouchOnly: true,
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
          if (evt.to.closest(".column").hasAttribute("data-needs-reason")) { askReason(evt); return; }
          document.body.classList.remove("dragging");
          // The server answers with the whole board as it now is: a refused move comes back in
          // its old column with the reason in a toast.
          postMove(evt.item, evt.to.dataset.status);
        },
      });
    });
  }

  // The live poll waits while someone is dragging, typing a reason, has a menu open or a move
  // is on its way; a poll answer that arrives in the middle of one of those is dropped (the
  // next poll fetches it again, since its stamp has not moved).
  function boardBusy(board) {
    return document.body.classList.contains("dragging") ||
      (reasonDialog && reasonDialog.open) ||
      board.querySelector(".card-menu[open], .htmx-request") ||
      (document.activeElement && board.contains(document.activeElement) &&
        document.activeElement.matches("input, select, textarea"));
  }
  function isPoll(e) {
    var elt = e.detail.elt;
    return elt && elt.hasAttribute && elt.hasAttribute("data-poll") &&
      e.detail.requestConfig && e.detail.requestConfig.verb === "get";
  }
  document.addEventListener("htmx:beforeRequest", function (e) {
    if (isPoll(e) && boardBusy(e.detail.elt)) e.preventDefault();
    // Typing in the search box already refreshed the board; the "change" it fires when it loses
    // focus (say, on pressing a card to drag it) would swap the board out under the pointer.
    var trigger = e.detail.requestConfig && e.detail.requestConfig.triggeringEvent;
    if (e.detail.elt.id === "filters" && trigger && trigger.type === "change" && trigger.target.type === "search") {
      e.preventDefault();
    }
  });
  document.addEventListener("htmx:beforeSwap", function (e) {
    if (isPoll(e) && e.detail.elt.isConnected && boardBusy(e.detail.elt)) e.detail.shouldSwap = false;
  });

  // Every swap of the board (a move, a poll, a filter) replaces the element that had the focus.
  // Put it back on the same card (the moved card, after a move from its menu), so a keyboard
  // user carries on from there instead of from the top of the page. A mouse drag focuses nothing.
  document.addEventListener("htmx:beforeSwap", function (e) {
    var board = e.detail.target;
    if (!board || board.id !== "board-columns" || !e.detail.shouldSwap) return;
    var active = document.activeElement;
    var card = active && board.contains(active) && active.closest(".card");
    if (!card) { refocus = null; return; }
    var moved = e.detail.requestConfig && e.detail.requestConfig.verb === "post";
    refocus = {
      caseId: card.dataset.caseId,
      selector: moved || !active.matches("summary") ? "a.patient" : ".card-menu summary",
    };
  });
  document.addEventListener("htmx:afterSettle", function (e) {
    if (!refocus || !e.detail.target || e.detail.target.id !== "board-columns") return;
    var want = refocus; refocus = null;
    var active = document.activeElement;
    if (active && active !== document.body && active.isConnected) return;
    var el = document.querySelector('#board-columns .card[data-case-id="' + want.caseId + '"] ' + want.selector);
    if (el) el.focus();
  });

  // ---- Selected cards (the bulk bar) --------------------------------------------------------
  // The selection outlives the board's swaps (a poll, a filter, a move): the ids are kept here
  // and the boxes of the cards still shown are ticked again after each swap.
  var picked = new Set();
  function showPicked() {
    var bar = document.getElementById("bulk");
    if (!bar) return;
    var shown = new Set();
    document.querySelectorAll("#board-columns .card .pick").forEach(function (box) {
      var id = box.value;
      box.checked = picked.has(id);
      box.closest(".card").classList.toggle("picked", box.checked);
      shown.add(id);
    });
    picked.forEach(function (id) { if (!shown.has(id)) picked.delete(id); });
    bar.hidden = picked.size === 0;
    bar.querySelector("[data-bulk-count]").textContent = String(picked.size);
  }
  document.addEventListener("change", function (e) {
    if (!e.target.matches(".card .pick")) return;
    if (e.target.checked) picked.add(e.target.value); else picked.delete(e.target.value);
    showPicked();
  });
  document.addEventListener("click", function (e) {
    if (!e.target.closest("[data-bulk-clear]")) return;
    picked.clear();
    showPicked();
  });
  document.addEventListener("htmx:afterSettle", function (e) {
    if (!e.detail.target || e.detail.target.id !== "board-columns") return;
    var board = document.getElementById("board-columns");  // the new one (an outerHTML swap)
    // After a bulk action the cards it refused stay selected (to act on them again); the rest are done.
    if (board && board.hasAttribute("data-bulk-done")) {
      picked = new Set(board.getAttribute("data-bulk-done").split(" ").filter(Boolean));
      board.removeAttribute("data-bulk-done");
      if (!picked.size) document.getElementById("bulk-reason").value = "";
    }
    showPicked();
  });

  htmx.onLoad(function (root) {
    armToasts(document);
    setupSortable(root.querySelectorAll ? root : document);
  });
  onReady(function () { setupDialog(); armToasts(document); setupSortable(document); });
})();
