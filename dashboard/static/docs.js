// Starts Swagger UI on /docs. A file, not an inline script: the page's Content-Security-Policy
// allows only this origin's scripts. Swagger UI itself is served from /static/vendor/swagger-ui/
// (the npm package swagger-ui-dist at the version pinned in dashboard/package-lock.json).
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    oauth2RedirectUrl: window.location.origin + root.dataset.oauth2RedirectUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
