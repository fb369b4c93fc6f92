// The example page's listener: shows the last event the embedded element fired. Runs before
// the element is defined, so `?backend=` is in place when it first loads its model.
const demo = document.getElementById("demo");
const out = document.getElementById("last-event");
const params = new URLSearchParams(location.search);
if (params.get("backend")) demo.setAttribute("backend", params.get("backend"));
demo.addEventListener("pneumoscope-result", (e) => {
  out.textContent = `pneumoscope-result: ${e.detail.top} on ${e.detail.backend}`;
});
demo.addEventListener("pneumoscope-error", (e) => {
  out.textContent = `pneumoscope-error: ${e.detail.message}`;
});
