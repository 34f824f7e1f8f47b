// atlas ui: the only script. The pages work without it; it adds select-all, enables the bulk
// buttons only when something is ticked, asks before a bulk quarantine, and saves the reviewer
// name on Enter. It never builds HTML from data.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const all = document.querySelector("[data-select-all]");
  const boxes = Array.from(document.querySelectorAll('input[name="ids"]'));
  const bulk = Array.from(document.querySelectorAll("[data-bulk]"));
  const sync = () => {
    const ticked = boxes.filter((b) => b.checked).length;
    bulk.forEach((b) => {
      b.disabled = ticked === 0;
      b.dataset.count = String(ticked);
    });
    if (all) {
      all.checked = ticked > 0 && ticked === boxes.length;
      all.indeterminate = ticked > 0 && ticked < boxes.length;
    }
  };
  if (all) {
    all.addEventListener("change", () => {
      boxes.forEach((b) => {
        b.checked = all.checked;
      });
      sync();
    });
  }
  boxes.forEach((b) => b.addEventListener("change", sync));
  if (bulk.length) sync();

  document.querySelectorAll('button[value="quarantined"][data-bulk]').forEach((button) => {
    button.addEventListener("click", (event) => {
      const n = button.dataset.count || "0";
      if (!window.confirm("Quarantine " + n + " session(s)? They will never be exported for training unless asked for.")) {
        event.preventDefault();
      }
    });
  });

  const reviewer = document.querySelector("form.reviewer input[name=reviewer]");
  if (reviewer) {
    reviewer.addEventListener("change", () => reviewer.form.submit());
  }
});
