// The wallboard's staffing chart: the plan `callrouter staffing plan --publish` wrote
// (offered load, seats planned and predicted service level per hour, both lines), as an
// image from /api/staffing/chart.svg; a click opens it full size. Shown only once one
// is published (and to roles that may read it); looked at again every ten minutes.
"use strict";
(function () {
  const section = document.getElementById("staffing");
  const img = document.getElementById("staffing-chart");
  if (!section || !img) return;
  img.style.maxWidth = "100%";  // CSSOM: allowed under the page's CSP
  img.style.background = "#ffffff";
  img.addEventListener("load", () => { section.hidden = false; });
  img.addEventListener("error", () => { section.hidden = true; });
  const load = () => { img.src = "/api/staffing/chart.svg?at=" + Date.now(); };
  load();
  setInterval(load, 600000);
})();
