// The offline shell: the page's own files are cached at install and served from the
// cache when the device cannot be reached. Network first, so an updated app shows at
// once when online. The API (/v1, /health, /metrics) is never cached: answers and
// status must be live.
"use strict";

const CACHE = "edgecloud-shell-v1";
const SHELL = ["./", "index.html", "app.js", "style.css", "manifest.webmanifest",
  "icon.svg", "icon-192.png", "icon-512.png"];
const LIVE = /\/(v1|health|metrics)(\/|$)/;

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin || LIVE.test(url.pathname)) {
    return; // the browser fetches it as usual
  }
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          caches.open(CACHE).then((cache) => cache.put(event.request, copy));
        }
        return response;
      })
      .catch(() => caches.match(event.request, { ignoreSearch: true })
        .then((hit) => hit || caches.match("index.html"))),
  );
});
