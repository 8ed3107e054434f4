// Report charts with Chart.js (served from /static/vendor, no CDN). Data comes from a JSON block.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var block = document.getElementById("chart-data");
  if (!block || !window.Chart) return;
  var data = JSON.parse(block.textContent), c = data.chart, l = data.labels;
  var daily = document.getElementById("chart-daily");
  if (daily) {
    new Chart(daily, {
      data: {
        labels: c.days,
        datasets: [
          { type: "bar", label: l.received, data: c.received, backgroundColor: "#0b57d0", yAxisID: "y" },
          { type: "line", label: l.mean, data: c.mean_minutes, borderColor: "#a50e0e", backgroundColor: "#a50e0e", yAxisID: "y1", spanGaps: true }
        ]
      },
      options: { responsive: true, maintainAspectRatio: false, animation: false,
        scales: { y: { beginAtZero: true, position: "left" }, y1: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } } } }
    });
  }
  var managers = document.getElementById("chart-managers");
  if (managers) {
    new Chart(managers, {
      type: "bar",
      data: { labels: c.managers, datasets: [{ label: l.per_manager, data: c.per_manager, backgroundColor: "#146c2e" }] },
      options: { indexAxis: "y", responsive: true, maintainAspectRatio: false, animation: false }
    });
  }
});
