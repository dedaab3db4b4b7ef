// Postroom console: small progressive enhancements only; every page works without it.
// Forms with data-confirm="..." ask before they are sent (deleting, revoking).
"use strict";
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form && form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
