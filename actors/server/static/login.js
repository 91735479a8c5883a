// The login page's script (no inline script: the CSP is default-src 'self'). The report server
// answers GET and HEAD only, so the token is not posted: it is kept in the dctrl_token cookie
// (a day, this site only, Secure on https) and the browser goes to the dashboard. The token is
// never put in a URL: the form's field has no name, so even without this script nothing is sent.
(function () {
  "use strict";
  var form = document.getElementById("login");
  var field = document.getElementById("token");
  var error = document.getElementById("login-error");
  var shape = /^dctrl_[0-9a-f]{8}_[A-Za-z0-9_-]{43}$/;
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var token = field.value.trim();
    if (!shape.test(token)) {
      error.textContent = "That is not a dctrl token (dctrl_ + 8 hex digits + _ + 43 characters).";
      error.hidden = false;
      return;
    }
    var secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie = "dctrl_token=" + token + "; Path=/; SameSite=Strict; Max-Age=86400" + secure;
    field.value = "";
    window.location.replace("/");
  });
})();
